# fusebox - one plain Makefile. See README.md for the targets.
#   make            build build/fusebox
#   make test       unit tests (cmocka) and black-box tests (node:test), the
#                   store's on SQLite and on a throw-away PostgreSQL
#   make demo       a job hitting its ceiling, against the fake provider
#   make demo-incident  a failing job rerun by a naive queue, three ways
#   make bench      fusebox side by side with nginx and Portkey, tables in bench/results/
#   make bench-scale  memory with many keys, results and open streams
#   make bench-dashboard  the dashboard over a million ledger rows
#   make bench-scan   fusebox scan's rate in MB/s
#   make bench-cluster  throughput of 1 node on SQLite, 1 and 3 on PostgreSQL
#   make callgrind-check  instructions per call against bench/callgrind.limits
#   make torture    kill -9 the gateway under load KILLS=100 times, check after each restart
#   make SANITIZE=1 ASan + UBSan build (into build-san/)
#   make lint       cppcheck over src/ (.cppcheck-suppressions)
#   make install PREFIX=/usr/local

PREFIX ?= /usr/local
CC ?= cc
PKGS := libevent libevent_pthreads libcurl sqlite3 jansson yaml-0.1 libcrypto libpcre2-8 libpq

ifeq ($(SANITIZE),1)
BUILD ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
OPT ?= -O1 -g
else
BUILD ?= build
SANFLAGS :=
OPT ?= -O2 -g
endif

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Wno-unused-parameter
ifeq ($(WERROR),1)
WARN += -Werror
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS ?= $(OPT)
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(SANFLAGS) $(PKG_CFLAGS) $(CFLAGS) -MMD -MP
LDLIBS = $(PKG_LIBS) -lpthread -lm

LIB_SRC := $(filter-out src/main.c,$(wildcard src/*.c))
# Data compiled in: data/classify.rules as a C string (scripts/embed.sh).
GEN_SRC := $(BUILD)/gen/classify_rules.c $(BUILD)/gen/scan_rules.c
LIB_OBJ := $(LIB_SRC:src/%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/classify_rules.o \
	$(BUILD)/obj/gen/scan_rules.o
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

FUZZ_SRC := $(wildcard fuzz/*_fuzz.c)
FUZZ_BIN := $(FUZZ_SRC:fuzz/%.c=build-fuzz/%)
FUZZ_SECONDS ?= 60

.PHONY: all deps test unit e2e e2e-pg torture demo demo-incident bench bench-scale bench-dashboard bench-scan bench-cluster callgrind-check install clean format valgrind fuzz fuzz-replay

all: $(BUILD)/fusebox

deps:
	@scripts/deps.sh

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/gen/classify_rules.c: data/classify.rules scripts/embed.sh
	@mkdir -p $(dir $@)
	scripts/embed.sh fb_classify_rules_builtin < $< > $@.tmp && mv $@.tmp $@

$(BUILD)/gen/scan_rules.c: data/scan.rules scripts/embed.sh
	@mkdir -p $(dir $@)
	scripts/embed.sh fb_scan_rules_builtin_text < $< > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libfusebox.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/fusebox: $(BUILD)/obj/main.o $(BUILD)/libfusebox.a
	$(CC) $(SANFLAGS) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libfusebox.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Isrc -o $@ $< $(BUILD)/libfusebox.a $(LDLIBS) -lcmocka

unit: $(UNIT_BIN)
	@scripts/run-unit.sh $(UNIT_BIN)

e2e: $(BUILD)/fusebox $(BUILD)/fbfault.so
	@FUSEBOX_BIN=$(abspath $(BUILD)/fusebox) FUSEBOX_FAULT_SO=$(abspath $(BUILD)/fbfault.so) scripts/run-e2e.sh

# The tests' disk-fault shim (LD_PRELOAD; tests/fault/fbfault.c). Plain,
# never sanitized: it only stands between the daemon and libc.
$(BUILD)/fbfault.so: tests/fault/fbfault.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) -O2 -g -shared -fPIC -o $@ $< -ldl

# The store's suites run twice: on SQLite (e2e) and on PostgreSQL (e2e-pg,
# a database per test env on the throw-away server scripts/with-pg.sh
# starts). cluster.test.mjs needs the server too.
# Left out: verify (SQLite's own integrity checks, a corrupted file) and
# diskfault (a full disk under the SQLite file).
PG_SUITES := budget money replay sdk errors generic incident metrics crash abuse \
    run secrets hardening reports alerts dashboard
e2e-pg: $(BUILD)/fusebox
	@if [ -z "$${FUSEBOX_TEST_PG:-}" ]; then echo "e2e-pg: FUSEBOX_TEST_PG is not set: skipped"; else \
	    FUSEBOX_E2E_STORE=pg E2E_FILES="$(PG_SUITES:%=tests/e2e/%.test.mjs)" \
	    FUSEBOX_BIN=$(abspath $(BUILD)/fusebox) scripts/run-e2e.sh; fi

test:
	@scripts/deps.sh --test
	@$(MAKE) --no-print-directory all $(UNIT_BIN) $(BUILD)/fbfault.so
	@scripts/with-pg.sh $(MAKE) --no-print-directory unit e2e e2e-pg

demo: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo.sh $(abspath $(BUILD)/fusebox)
	@echo; echo "Next: make demo-incident (a failing job rerun 21 times by a naive queue: bare, through fusebox, under fusebox run)"

demo-incident: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo-incident.sh $(abspath $(BUILD)/fusebox)

bench: deps
	@$(MAKE) --no-print-directory all $(BUILD)/loadgen
	@bench/run.sh $(abspath $(BUILD)/fusebox) $(abspath $(BUILD)/loadgen)

callgrind-check: deps
	@$(MAKE) --no-print-directory all
	@bench/callgrind.sh $(abspath $(BUILD)/fusebox)

# Memory and scale (issue 5): 10,000 open streams, 1/100/10,000 keys, a
# million kept results; tables in bench/results/scale.{md,json}.
bench-scale: deps
	@$(MAKE) --no-print-directory all
	@node bench/scale.mjs $(abspath $(BUILD)/fusebox)

# The dashboard over a million ledger rows (issue 7): bench/results/dashboard.md
bench-dashboard:
	@scripts/deps.sh --test
	@$(MAKE) --no-print-directory all
	@node bench/dashboard.mjs $(abspath $(BUILD)/fusebox)

# fusebox scan's rate over this project plus 3,000 generated files (issue 8):
# bench/results/scan.md
bench-scan: deps
	@$(MAKE) --no-print-directory all
	@node bench/scan.mjs $(abspath $(BUILD)/fusebox)

# Forwarded-call throughput: one node on SQLite, one on PostgreSQL, three
# on one PostgreSQL; round trips per call (issue 9): bench/results/cluster.md
bench-cluster: deps
	@scripts/deps.sh --test
	@$(MAKE) --no-print-directory all
	@node bench/cluster.mjs $(abspath $(BUILD)/fusebox)

# The bench's load generator (open loop at fixed rates, p99.9): libevent only.
$(BUILD)/loadgen: bench/loadgen.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(OPT) $(shell pkg-config --cflags libevent) \
	    -o $@ $< $(shell pkg-config --libs libevent) -lm

# Crash safety (issue 6): the gateway under load, killed -9 KILLS times
# and restarted; the store, the money and the kept results checked after
# each restart (tests/torture/torture.mjs).
KILLS ?= 100
torture: $(BUILD)/fusebox
	@KILLS=$(KILLS) FUSEBOX_BIN=$(abspath $(BUILD)/fusebox) node tests/torture/torture.mjs

valgrind: deps
	@$(MAKE) --no-print-directory all $(BUILD)/fbfault.so
	@FUSEBOX_VALGRIND=1 FUSEBOX_BIN=$(abspath $(BUILD)/fusebox) FUSEBOX_FAULT_SO=$(abspath $(BUILD)/fbfault.so) scripts/run-e2e.sh

# libFuzzer targets (clang): every parser of outside bytes.
build-fuzz/%: fuzz/%.c $(LIB_SRC) $(GEN_SRC)
	@mkdir -p build-fuzz
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
	    -Isrc $(PKG_CFLAGS) $< $(LIB_SRC) $(GEN_SRC) -o $@ $(LDLIBS)

# Fuzz each target for FUZZ_SECONDS.
fuzz: $(FUZZ_BIN)
	@for t in $(FUZZ_BIN); do n=$$(basename $$t _fuzz); mkdir -p build-fuzz/corpus-$$n; \
	    $$t -max_total_time=$(FUZZ_SECONDS) -dict=fuzz/$$n.dict build-fuzz/corpus-$$n fuzz/corpus/$$n || exit 1; done

# Replay the committed corpora (CI): every seed must run clean.
fuzz-replay: $(FUZZ_BIN)
	@for t in $(FUZZ_BIN); do n=$$(basename $$t _fuzz); $$t -runs=0 fuzz/corpus/$$n || exit 1; done

# CI: fuzz each target for FUZZ_CI_SECONDS from its committed corpus. New
# inputs go to a throw-away corpus; a crash is saved as
# build-fuzz/NAME-crash-* and its log printed.
FUZZ_CI_SECONDS ?= 20
.PHONY: fuzz-ci
fuzz-ci: $(FUZZ_BIN)
	@for t in $(FUZZ_BIN); do n=$$(basename $$t _fuzz); rm -rf build-fuzz/ci-$$n; mkdir -p build-fuzz/ci-$$n; \
	    if ! $$t -max_total_time=$(FUZZ_CI_SECONDS) -timeout=10 -dict=fuzz/$$n.dict \
	        -artifact_prefix=build-fuzz/$$n- build-fuzz/ci-$$n fuzz/corpus/$$n >build-fuzz/ci-$$n.log 2>&1; then \
	        tail -n 60 build-fuzz/ci-$$n.log; echo "fuzz-ci: $$n FAILED (build-fuzz/ci-$$n.log)"; exit 1; fi; \
	    echo "fuzz-ci: $$n $$(grep -a 'DONE ' build-fuzz/ci-$$n.log | tail -n 1)"; done

# Static analysis: cppcheck over src/ with the committed configuration
# (.cppcheck-suppressions says why each suppression is there). Clean means
# it prints nothing. Not parallel (-j): the whole-program checks need one run.
CPPCHECK_FLAGS := --std=c11 -D_GNU_SOURCE -Isrc --library=posix --library=gnu \
    --enable=warning,style,performance,portability --inline-suppr \
    --suppressions-list=.cppcheck-suppressions --error-exitcode=1 -q \
    --template='{file}:{line}: {severity}/{id}: {message}'

.PHONY: lint
lint:
	@command -v cppcheck >/dev/null || { echo "lint: cppcheck is not installed (apt-get install cppcheck)" >&2; exit 2; }
	cppcheck $(CPPCHECK_FLAGS) src

install: $(BUILD)/fusebox
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BUILD)/fusebox $(DESTDIR)$(PREFIX)/bin/fusebox

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c

clean:
	rm -rf build build-san build-fuzz

-include $(LIB_OBJ:.o=.d) $(BUILD)/obj/main.d
