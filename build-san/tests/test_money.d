build-san/tests/test_money: tests/unit/test_money.c src/money.h \
 src/common.h
src/money.h:
src/common.h:
