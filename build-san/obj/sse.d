build-san/obj/sse.o: src/sse.c src/sse.h src/common.h
src/sse.h:
src/common.h:
