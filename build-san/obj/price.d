build-san/obj/price.o: src/price.c src/price.h src/common.h src/money.h \
 src/map.h
src/price.h:
src/common.h:
src/money.h:
src/map.h:
