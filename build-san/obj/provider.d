build-san/obj/provider.o: src/provider.c src/provider.h src/common.h \
 src/config.h src/money.h src/price.h
src/provider.h:
src/common.h:
src/config.h:
src/money.h:
src/price.h:
