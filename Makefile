# The two commands a newcomer needs:
#   make demo   install what is missing, build Release, run `qkv demo`
#   make test   install what is missing, build, run every test (Release and ASan+UBSan)
# The CLI is at build/qkv afterwards.

JOBS ?= $(shell nproc)
BUILD ?= build
SAN_BUILD ?= build-asan

.PHONY: demo test deps build build-asan clean

demo: build
	./$(BUILD)/qkv demo

test: build build-asan
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	cd $(SAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS)

deps:
	@./scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQKV_SANITIZE=ON
	cmake --build $(SAN_BUILD) -j $(JOBS)

clean:
	rm -rf $(BUILD) $(SAN_BUILD)
