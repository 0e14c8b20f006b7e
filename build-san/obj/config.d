build-san/obj/config.o: src/config.c src/config.h src/common.h \
 src/money.h src/price.h
src/config.h:
src/common.h:
src/money.h:
src/price.h:
