build-san/obj/gateway.o: src/gateway.c src/gateway.h src/config.h \
 src/common.h src/money.h src/price.h src/budget.h src/keys.h src/store.h \
 src/ledger.h src/log.h src/map.h src/provider.h src/server.h src/http.h \
 src/sse.h src/upstream.h
src/gateway.h:
src/config.h:
src/common.h:
src/money.h:
src/price.h:
src/budget.h:
src/keys.h:
src/store.h:
src/ledger.h:
src/log.h:
src/map.h:
src/provider.h:
src/server.h:
src/http.h:
src/sse.h:
src/upstream.h:
