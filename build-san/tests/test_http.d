build-san/tests/test_http: tests/unit/test_http.c src/http.h
src/http.h:
