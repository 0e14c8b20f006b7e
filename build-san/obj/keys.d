build-san/obj/keys.o: src/keys.c src/keys.h src/common.h src/store.h \
 src/config.h src/money.h src/price.h
src/keys.h:
src/common.h:
src/store.h:
src/config.h:
src/money.h:
src/price.h:
