build-san/tests/test_config: tests/unit/test_config.c src/config.h \
 src/common.h src/money.h src/price.h
src/config.h:
src/common.h:
src/money.h:
src/price.h:
