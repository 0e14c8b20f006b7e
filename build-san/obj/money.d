build-san/obj/money.o: src/money.c src/money.h src/common.h
src/money.h:
src/common.h:
