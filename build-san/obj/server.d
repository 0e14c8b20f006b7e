build-san/obj/server.o: src/server.c src/server.h src/common.h src/http.h
src/server.h:
src/common.h:
src/http.h:
