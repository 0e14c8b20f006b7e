build-san/tests/test_ledger: tests/unit/test_ledger.c src/keys.h \
 src/common.h src/store.h src/config.h src/money.h src/price.h \
 src/ledger.h src/store.h
src/keys.h:
src/common.h:
src/store.h:
src/config.h:
src/money.h:
src/price.h:
src/ledger.h:
src/store.h:
