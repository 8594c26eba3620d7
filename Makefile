# oncebox: a plain GNU Makefile. `make` builds everything into $(BUILD).
#
#   make                 library, tool, mock broker, examples, tests, benches
#   make deps            install missing Debian packages (as root)
#   make test            unit + integration tests (starts its own servers)
#   make test-unit       unit tests only (no servers)
#   make test-integration
#   make asan            the tests under AddressSanitizer + UBSan
#   make valgrind        the tests under valgrind (leaks are errors)
#   make bench           benchmarks with their baselines
#   make demo            the main job on a throwaway PostgreSQL
#   make install         PREFIX=/usr/local DESTDIR=
#   make style-check     line width, tabs, trailing blanks, clang-format

BUILD ?= build
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
DESTDIR ?=

VERSION_MAJOR := $(shell sed -n 's/^\#define OB_VERSION_MAJOR \([0-9]*\)/\1/p' include/oncebox/core.h)
VERSION := $(shell sed -n 's/^\#define OB_VERSION_STRING "\(.*\)"/\1/p' include/oncebox/core.h)
SONAME := liboncebox.so.$(VERSION_MAJOR)

CC ?= cc
OPT ?= -O2
SAN ?=
PKGS := libpq rdkafka lmdb jansson libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(PKG_LIBS),)
PKG_CFLAGS := -I/usr/include/postgresql
PKG_LIBS := -lpq -lrdkafka -llmdb -ljansson -lcrypto
endif

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
        -Wmissing-prototypes -Wpointer-arith -Wformat=2 -Wvla
CFLAGS ?= $(OPT) -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(SAN) \
              -Iinclude -I. -I$(BUILD)/gen $(PKG_CFLAGS)
LIB_CFLAGS := $(ALL_CFLAGS) -fPIC -fvisibility=hidden -DOB_BUILDING_LIBRARY
LDFLAGS ?=
ALL_LDFLAGS := $(LDFLAGS) $(SAN)
LIBS := $(PKG_LIBS) -lpthread

LIB_SRCS := $(wildcard core/*.c dedup/*.c outbox/*.c inbox/*.c)
GEN_SRCS := $(BUILD)/gen/migrations.c
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/migrations.o

TOOL_SRCS := $(wildcard tools/oncebox/*.c)
TOOL_OBJS := $(TOOL_SRCS:%.c=$(BUILD)/obj/%.o)
BROKER_SRCS := $(wildcard tools/mock-broker/*.c)
BROKER_OBJS := $(BROKER_SRCS:%.c=$(BUILD)/obj/%.o)
SUPPORT_SRCS := $(wildcard tests/support/*.c)
SUPPORT_OBJS := $(SUPPORT_SRCS:%.c=$(BUILD)/obj/%.o)

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/unit/%)
INTEG_SRCS := $(wildcard tests/integration/test_*.c)
INTEG_BINS := $(INTEG_SRCS:tests/integration/%.c=$(BUILD)/tests/integration/%)
EXAMPLE_SRCS := $(wildcard examples/*.c)
EXAMPLE_BINS := $(EXAMPLE_SRCS:examples/%.c=$(BUILD)/examples/%)
BENCH_SRCS := $(wildcard bench/bench_*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)

STATIC_LIB := $(BUILD)/liboncebox.a
SHARED_LIB := $(BUILD)/liboncebox.so.$(VERSION)
RPATH := -Wl,-rpath,'$$ORIGIN/..' -Wl,-rpath,'$$ORIGIN/../..'

.PHONY: all lib deps test test-unit test-integration asan valgrind bench \
        demo install uninstall clean style-check format

all: lib $(BUILD)/oncebox $(BUILD)/mock-broker $(EXAMPLE_BINS) \
     $(UNIT_BINS) $(INTEG_BINS) $(BENCH_BINS) $(BUILD)/oncebox.pc

lib: $(STATIC_LIB) $(SHARED_LIB)

$(BUILD)/gen/migrations.c: $(sort $(wildcard sql/*.sql)) tools/embed-sql.sh
	@mkdir -p $(@D)
	sh tools/embed-sql.sh $(sort $(wildcard sql/*.sql)) > $@.tmp
	mv $@.tmp $@

$(BUILD)/obj/gen/migrations.o: $(BUILD)/gen/migrations.c
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/core/%.o $(BUILD)/obj/dedup/%.o $(BUILD)/obj/outbox/%.o \
$(BUILD)/obj/inbox/%.o: LIB_OBJ_FLAGS = 1

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(if $(LIB_OBJ_FLAGS),$(LIB_CFLAGS),$(ALL_CFLAGS)) -MMD -MP \
	    -c $< -o $@

$(STATIC_LIB): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(SHARED_LIB): $(LIB_OBJS)
	$(CC) -shared -Wl,-soname,$(SONAME) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)
	ln -sf liboncebox.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/liboncebox.so

$(BUILD)/oncebox: $(TOOL_OBJS) $(STATIC_LIB)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/mock-broker: $(BROKER_OBJS)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(shell pkg-config --libs rdkafka \
	    2>/dev/null || echo -lrdkafka) -lpthread

# Unit tests may test internals, so they link the static library.
$(BUILD)/tests/unit/%: $(BUILD)/obj/tests/unit/%.o $(STATIC_LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) -lcmocka

# Integration tests, examples and benchmarks use only the public API of
# the shared library, which proves that everything they need is exported.
$(BUILD)/tests/integration/%: $(BUILD)/obj/tests/integration/%.o \
                              $(SUPPORT_OBJS) $(SHARED_LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) $(RPATH) -o $@ $(filter %.o,$^) \
	    -L$(BUILD) -loncebox $(LIBS) -lcmocka

$(BUILD)/examples/%: $(BUILD)/obj/examples/%.o $(SHARED_LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) $(RPATH) -o $@ $(filter %.o,$^) \
	    -L$(BUILD) -loncebox $(LIBS)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(SHARED_LIB)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) $(RPATH) -o $@ $(filter %.o,$^) \
	    -L$(BUILD) -loncebox $(LIBS)

$(BUILD)/oncebox.pc: oncebox.pc.in include/oncebox/core.h
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    $< > $@

deps:
	@sh tools/deps.sh

test: deps
	$(MAKE) all
	bash tests/run-unit.sh $(BUILD)
	bash tests/run-integration.sh $(BUILD)

test-unit: all
	bash tests/run-unit.sh $(BUILD)

test-integration: all
	bash tests/run-integration.sh $(BUILD)

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer \
	         -fno-sanitize-recover=all" all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    bash tests/run-unit.sh build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    bash tests/run-integration.sh build-asan

VALGRIND := valgrind --quiet --error-exitcode=99 --leak-check=full \
            --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
            --suppressions=$(CURDIR)/tests/valgrind.supp

valgrind: all
	OB_TEST_WRAPPER="$(VALGRIND)" bash tests/run-unit.sh $(BUILD)
	OB_TEST_WRAPPER="$(VALGRIND)" bash tests/run-integration.sh $(BUILD)

bench: deps
	$(MAKE) all
	bash bench/run.sh $(BUILD)

demo: deps
	$(MAKE) all
	bash examples/demo.sh $(BUILD)

install: lib $(BUILD)/oncebox
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(BINDIR) \
	    $(DESTDIR)$(INCLUDEDIR)/oncebox
	install -m 644 include/oncebox/*.h $(DESTDIR)$(INCLUDEDIR)/oncebox/
	install -m 644 $(STATIC_LIB) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED_LIB) $(DESTDIR)$(LIBDIR)/
	ln -sf liboncebox.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/liboncebox.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    oncebox.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/oncebox.pc
	install -m 755 $(BUILD)/oncebox $(DESTDIR)$(BINDIR)/

uninstall:
	rm -rf $(DESTDIR)$(INCLUDEDIR)/oncebox
	rm -f $(DESTDIR)$(LIBDIR)/liboncebox.* \
	    $(DESTDIR)$(LIBDIR)/pkgconfig/oncebox.pc $(DESTDIR)$(BINDIR)/oncebox

STYLE_FILES = $(shell git ls-files '*.c' '*.h' 2>/dev/null)

style-check:
	@sh tools/style-check.sh $(STYLE_FILES)

format:
	clang-format -i $(STYLE_FILES)

clean:
	rm -rf build build-asan

# Object files are kept, not removed as intermediates, so a second make
# rebuilds nothing.
.SECONDARY:

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
