build-san/obj/map.o: src/map.c src/map.h src/common.h
src/map.h:
src/common.h:
