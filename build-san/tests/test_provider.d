build-san/tests/test_provider: tests/unit/test_provider.c src/provider.h \
 src/common.h src/config.h src/money.h src/price.h src/sse.h
src/provider.h:
src/common.h:
src/config.h:
src/money.h:
src/price.h:
src/sse.h:
