build-san/obj/http.o: src/http.c src/http.h src/common.h
src/http.h:
src/common.h:
