build-san/obj/common.o: src/common.c src/common.h
src/common.h:
