build-san/obj/ledger.o: src/ledger.c src/ledger.h src/common.h \
 src/store.h src/config.h src/money.h src/price.h src/budget.h
src/ledger.h:
src/common.h:
src/store.h:
src/config.h:
src/money.h:
src/price.h:
src/budget.h:
