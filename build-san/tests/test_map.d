build-san/tests/test_map: tests/unit/test_map.c \
 tests/unit/../../src/map.c tests/unit/../../src/map.h \
 tests/unit/../../src/common.h
tests/unit/../../src/map.c:
tests/unit/../../src/map.h:
tests/unit/../../src/common.h:
