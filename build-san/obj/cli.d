build-san/obj/cli.o: src/cli.c src/cli.h src/budget.h src/common.h \
 src/config.h src/money.h src/price.h src/keys.h src/store.h
src/cli.h:
src/budget.h:
src/common.h:
src/config.h:
src/money.h:
src/price.h:
src/keys.h:
src/store.h:
