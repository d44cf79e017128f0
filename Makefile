# taskhive — plain GNU Makefile.
#
#   make            library (static + shared) and programs
#   make check      unit tests plainly, under ASan+UBSan and under TSan, a
#                   bounded libFuzzer run, then the line "N passed, N failed"
#   make tsan       the tests under ThreadSanitizer only
#   make bench      benchmarks; prints "<name> <value> <unit>" lines
#   make run        the main job: the daemon on 127.0.0.1:7070 (installs what is missing)
#   make demo       a small library demo on a SQLite file
#   make install    PREFIX=/usr/local DESTDIR=
#   make lint       bans unsafe libc calls; clang-format check when present

PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
SAN     ?=

CC      ?= cc
PKGS    := sqlite3 jansson libsodium libzstd zlib libcurl libevent libevent_pthreads inih
DEPCFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEPLIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lsqlite3 -ljansson)

WARN    := -Wall -Wextra -Wpedantic -Werror -Wformat=2 -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wno-unused-parameter
OPT     ?= -O2 -g
# User CFLAGS/LDFLAGS are appended, never replace what the build needs.
override CFLAGS := $(OPT) -std=c11 -D_GNU_SOURCE $(WARN) -fPIC -fvisibility=hidden \
           -Iinclude -Isrc $(DEPCFLAGS) -MMD -MP $(CFLAGS)
LDLIBS  := $(DEPLIBS) -lpthread -lm

ifeq ($(SAN),asan)
override CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(SAN),fuzz)
override CFLAGS  += -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
LDFLAGS += -fsanitize=fuzzer,address,undefined
endif
ifeq ($(SAN),tsan)
override CFLAGS  += -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS += -fsanitize=thread
endif

LIB_SRC   := $(sort $(filter-out src/cli/%,$(wildcard src/*/*.c)))
CLI_SRC   := $(sort $(wildcard src/cli/*.c))
CLI_OBJ   := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
CLI_BIN   := $(BUILD)/taskhive
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC  := $(sort $(wildcard tests/unit/*_test.c))
TEST_BIN  := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TEST_HELP := $(sort $(wildcard tests/lib/*.c))
TEST_HOBJ := $(TEST_HELP:%.c=$(BUILD)/obj/%.o)
BENCH_SRC := $(sort $(wildcard bench/*.c))
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
EX_SRC    := $(sort $(wildcard examples/*.c))
EX_BIN    := $(EX_SRC:examples/%.c=$(BUILD)/examples/%)

STATIC := $(BUILD)/libtaskhive.a
SHARED := $(BUILD)/libtaskhive.so.0

.PHONY: all check test tsan bench run demo install clean lint deps format fuzz fuzz-build
FUZZ_SECONDS ?= 20
all: $(STATIC) $(SHARED) $(CLI_BIN) $(EX_BIN)

deps:
	@sh scripts/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(STATIC): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libtaskhive.so.0 $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(CLI_BIN): $(CLI_OBJ) $(STATIC)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(STATIC) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(TEST_HOBJ) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/lib $(LDFLAGS) -o $@ $< $(TEST_HOBJ) $(STATIC) -lcmocka $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(STATIC) $(LDLIBS)

# The LLM benchmark runs the fake provider of the test tree.
$(BUILD)/bench/llm_bench: bench/llm_bench.c $(TEST_HOBJ) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/lib $(LDFLAGS) -o $@ $< $(TEST_HOBJ) $(STATIC) -lcmocka $(LDLIBS)

$(BUILD)/examples/%: examples/%.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(STATIC) $(LDLIBS)

# Runs every unit test binary of one build; prints per-binary results.
test: $(TEST_BIN) $(EX_BIN) $(CLI_BIN)
	@TH_TASKHIVE_BIN=$(CURDIR)/$(CLI_BIN) sh tests/run.sh $(BUILD) $(TEST_BIN)

check: deps lint
	@rm -f build/results.txt build/asan/results.txt build/tsan/results.txt
	@$(MAKE) --no-print-directory test BUILD=build
	@$(MAKE) --no-print-directory test BUILD=build/asan SAN=asan OPT="-O1 -g"
	@$(MAKE) --no-print-directory test BUILD=build/tsan SAN=tsan OPT="-O1 -g"
	@$(MAKE) --no-print-directory fuzz
	@sh tests/summary.sh build/results.txt build/asan/results.txt build/tsan/results.txt

tsan:
	@$(MAKE) --no-print-directory test BUILD=build/tsan SAN=tsan OPT="-O1 -g"
	@$(MAKE) --no-print-directory fuzz
	@sh tests/summary.sh build/tsan/results.txt

# libFuzzer (clang): request parsing and JSON decoding; FUZZ_SECONDS bounds the run.
fuzz:
	@$(MAKE) --no-print-directory fuzz-build BUILD=build/fuzz SAN=fuzz CC=clang OPT="-O1 -g"
	@mkdir -p build/fuzz/corpus && cp tests/fuzz/corpus/* build/fuzz/corpus/
	@build/fuzz/fuzz_request -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 \
	    -rss_limit_mb=4096 -print_final_stats=1 build/fuzz/corpus > build/fuzz/fuzz.log 2>&1; \
	    rc=$$?; grep -E '^(Done|stat::number|==[0-9]+==ERROR|SUMMARY)' build/fuzz/fuzz.log; \
	    [ $$rc -eq 0 ] || { echo "fuzz: failure, see build/fuzz/fuzz.log"; exit 1; }

fuzz-build: $(BUILD)/fuzz_request

$(BUILD)/fuzz_request: tests/fuzz/fuzz_request.c $(STATIC)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(STATIC) $(LDLIBS)

bench: $(BENCH_BIN) $(CLI_BIN)
	@sh bench/run.sh $(BUILD)

run: deps all
	$(CLI_BIN) serve

demo: deps all
	$(BUILD)/examples/demo

lint:
	@if grep -nE '\b(sprintf|strcpy|strcat|strtok|atoi|gets)[[:space:]]*\(' \
	    $$(find src include tests bench examples -name '*.[ch]' 2>/dev/null); then \
	    echo "lint: banned function (use snprintf, memcpy with a bound, strtol...)"; exit 1; fi
	@if command -v clang-format >/dev/null 2>&1; then \
	    clang-format --dry-run -Werror $$(find src include tests bench examples -name '*.[ch]' 2>/dev/null) \
	    || { echo "lint: run 'make format'"; exit 1; }; fi

format:
	clang-format -i $$(find src include tests bench examples -name '*.[ch]')

install: $(STATIC) $(SHARED) $(CLI_BIN)
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(CLI_BIN) $(DESTDIR)$(PREFIX)/bin/taskhive
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/taskhive $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(STATIC) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SHARED) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libtaskhive.so.0 $(DESTDIR)$(PREFIX)/lib/libtaskhive.so
	install -m 644 include/taskhive/*.h $(DESTDIR)$(PREFIX)/include/taskhive/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|0.1.0|' taskhive.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/taskhive.pc

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(TEST_HOBJ:.o=.d) $(CLI_OBJ:.o=.d)
