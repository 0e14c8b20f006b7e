build-san/tests/test_price: tests/unit/test_price.c src/price.h \
 src/common.h src/money.h
src/price.h:
src/common.h:
src/money.h:
