build-san/obj/store_sqlite.o: src/store_sqlite.c src/store.h src/common.h \
 src/config.h src/money.h src/price.h
src/store.h:
src/common.h:
src/config.h:
src/money.h:
src/price.h:
