build-san/tests/test_sse: tests/unit/test_sse.c src/sse.h src/common.h
src/sse.h:
src/common.h:
