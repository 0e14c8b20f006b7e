build-san/obj/budget.o: src/budget.c src/budget.h src/common.h \
 src/config.h src/money.h src/price.h src/map.h src/store.h
src/budget.h:
src/common.h:
src/config.h:
src/money.h:
src/price.h:
src/map.h:
src/store.h:
