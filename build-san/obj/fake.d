build-san/obj/fake.o: src/fake.c src/fake.h src/common.h src/money.h \
 src/price.h
src/fake.h:
src/common.h:
src/money.h:
src/price.h:
