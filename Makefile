# georeg: one GNU Makefile. `make` builds build/georeg; `make asan` builds
# build/asan/georeg with AddressSanitizer + UndefinedBehaviorSanitizer.
# Objects live under $(BUILD); dependencies come from -MMD -MP.

BUILD    ?= build
SANITIZE ?=
CC       ?= cc
PYTHON   ?= /usr/bin/python3
OPT      ?= -O2

WARN := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes \
        -Wmissing-prototypes -Wvla -Wformat=2 -Wno-missing-field-initializers
CPPFLAGS += -D_GNU_SOURCE -I. -I$(BUILD)/gen -I/usr/share/include/llhttp
CFLAGS   += -std=c11 $(OPT) -g -pthread -fno-omit-frame-pointer -MMD -MP
LDLIBS   += -luv -lrocksdb -lnng -lprotobuf-c -lssl -lcrypto -ljansson -lyaml -lcurl -lpthread -lm

ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=$(SANITIZE)
endif

COMMON_SRC  := $(wildcard common/*.c)
STORAGE_SRC := $(wildcard storage/*.c)
REPL_SRC    := $(wildcard replication/*.c)
NODE_SRC    := $(filter-out node/main.c,$(wildcard node/*.c node/*/*.c))
# node-llhttp's three sources, named rather than globbed: on a fresh machine the
# package is installed by the deps stamp after this Makefile was read.
LLHTTP_SRC  := $(addprefix /usr/share/llhttp/,api.c http.c llhttp.c)
PROTO_C     := $(BUILD)/gen/proto/replication.pb-c.c
PROTO_H     := $(BUILD)/gen/proto/replication.pb-c.h

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
LIB_OBJ := $(call obj,$(COMMON_SRC) $(STORAGE_SRC) $(REPL_SRC) $(NODE_SRC)) \
           $(patsubst /usr/share/llhttp/%.c,$(BUILD)/obj/llhttp/%.o,$(LLHTTP_SRC)) \
           $(BUILD)/obj/gen/replication.pb-c.o

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

DEPS_STAMP := $(BUILD)/.deps-ok

.PHONY: all asan run test unit integration bench cluster compose-test fmt lint clean deps \
        test-tools fuzz fuzz-regress drill
all: $(BUILD)/georeg

# ---- dependencies: install what is missing, once per build dir ----
$(DEPS_STAMP): scripts/install-deps.sh
	@bash scripts/install-deps.sh
	@mkdir -p $(@D) && touch $@
deps: $(DEPS_STAMP)

# ---- generated and vendored code (no -Werror) ----
$(PROTO_C) $(PROTO_H): proto/replication.proto | $(DEPS_STAMP)
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen $<

$(BUILD)/obj/gen/replication.pb-c.o: $(PROTO_C)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -w -c -o $@ $<

/usr/share/llhttp/%.c: | $(DEPS_STAMP) ;

$(BUILD)/obj/llhttp/%.o: /usr/share/llhttp/%.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -w -c -o $@ $<

# ---- our code ----
$(BUILD)/obj/%.o: %.c | $(DEPS_STAMP) $(PROTO_H)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -c -o $@ $<

$(BUILD)/libgeoreg.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/georeg: $(BUILD)/obj/node/main.o $(BUILD)/libgeoreg.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libgeoreg.a | $(DEPS_STAMP) $(PROTO_H)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(LDFLAGS) -o $@ $< $(BUILD)/libgeoreg.a $(LDLIBS) -lcmocka

$(BUILD)/faultproxy: tests/tools/faultproxy.c | $(DEPS_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -std=c11 -O2 -g $(WARN) -o $@ $< -luv

asan:
	$(MAKE) BUILD=build/asan SANITIZE=address,undefined OPT=-O1 all unit-bins

unit-bins: $(UNIT_BIN)

# ---- running ----
run: all
	@mkdir -p var
	$(BUILD)/georeg serve --listen 127.0.0.1:5000 --data ./var --name local --auth none

cluster: all
	bash scripts/cluster.sh start

# the failover drill (issue 9 section 9): kill -9, partition, return of the old
# primary, sync off and on, on fresh loopback clusters; DRILL_ARGS=--quick for less
drill: all build/faultproxy
	FAULTPROXY_BIN=$(abspath build/faultproxy) GEOREG_CERTS_SCRIPT=$(abspath scripts/gen-certs.sh) \
	    GEOREG_BIN=$(abspath $(BUILD)/georeg) PYTHON=$(PYTHON) bash scripts/drill.sh $(DRILL_ARGS)

# ---- tests ----
test-tools:
	@bash scripts/install-deps.sh --test
	@bash scripts/install-test-tools.sh

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

TEST_ENV = FAULTPROXY_BIN=$(abspath build/faultproxy) GEOREG_CERTS_SCRIPT=$(abspath scripts/gen-certs.sh)

integration: all build/faultproxy test-tools
	$(TEST_ENV) GEOREG_BIN=$(abspath $(BUILD)/georeg) $(PYTHON) -m pytest -q -rs tests/integration $(PYTEST_ARGS)

# make test: release build, unit + integration; then the same under ASan/UBSan.
test: test-tools
	$(MAKE) all unit build/faultproxy
	$(MAKE) asan
	$(MAKE) BUILD=build/asan SANITIZE=address,undefined OPT=-O1 unit
	$(MAKE) fuzz-regress
	$(TEST_ENV) GEOREG_BIN=$(abspath build/georeg) $(PYTHON) -m pytest -q -rs tests/integration $(PYTEST_ARGS)
	$(TEST_ENV) GEOREG_BIN=$(abspath build/asan/georeg) GEOREG_ASAN=1 $(PYTHON) -m pytest -q -rs \
	    tests/integration $(PYTEST_ARGS)
	$(TEST_ENV) $(PYTHON) -m pytest -q tests/tools
	bash deploy/compose-test.sh

bench:
	bash scripts/bench/run.sh

compose-test: all
	bash deploy/compose-test.sh

fuzz:
	$(MAKE) -f tests/fuzz/Makefile

# every stored fuzz input (corpus and crash reproducers) replayed through its driver,
# built with gcc + ASan/UBSan: no clang needed
fuzz-regress:
	$(MAKE) -f tests/fuzz/Makefile regress

fmt:
	clang-format -i $$(git ls-files '*.c' '*.h')

lint: $(PROTO_H)
	cppcheck --quiet --enable=warning,performance,portability --inline-suppr \
	    -I. -I$(BUILD)/gen common storage replication node

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
