build-san/tests/test_budget: tests/unit/test_budget.c src/budget.h \
 src/common.h src/config.h src/money.h src/price.h
src/budget.h:
src/common.h:
src/config.h:
src/money.h:
src/price.h:
