build-san/obj/upstream.o: src/upstream.c src/upstream.h src/common.h
src/upstream.h:
src/common.h:
