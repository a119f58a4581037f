"""The CPU schedule's team-size policy (csrc/cpu/backoff.h), driven call by call.

A small driver compiled from the header plays a scripted sequence of calls, each on time or late and
each some milliseconds after the one before, and prints the team every call was given. Expected teams
are worked out by hand from the rules in csrc/cpu/schedule.h: a late call leaves one more thread out,
the full team is tried again after 4 calls, each late probe doubles that span up to 256 calls, and a
probe comes at the latest 10 s after the last late call.
"""
import pathlib
import shutil
import subprocess

import pytest

CSRC_CPU = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "cpu"
COMPILER = shutil.which("c++") or shutil.which("g++")

DRIVER = r"""
#include <iostream>
#include <string>
#include "backoff.h"

// argv[1]: the process's threads. stdin: one "LATE MS" pair per call (LATE 0 or 1; MS milliseconds
// since the previous call). stdout: the team of each call. As schedule.cpp does, a call of one thread
// runs alone and reports nothing.
int main(int argc, char** argv) {
  using l2fast::cpu::Backoff;
  const int threads = std::stoi(argv[argc - 1]);
  Backoff backoff;
  Backoff::Clock::time_point now{};
  int late = 0;
  long ms = 0;
  while (std::cin >> late >> ms) {
    now += std::chrono::milliseconds(ms);
    const int team = backoff.team(threads, now);
    std::cout << team << "\n";
    if (team > 1) backoff.record(team, threads, late != 0, now);
  }
}
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if COMPILER is None:
        pytest.skip("no C++ compiler")
    folder = tmp_path_factory.mktemp("backoff")
    (folder / "driver.cpp").write_text(DRIVER)
    binary = folder / "driver"
    subprocess.run([COMPILER, "-std=c++17", "-O1", f"-I{CSRC_CPU}", str(folder / "driver.cpp"), "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    return binary


def teams(driver, threads, calls):
    """The team of each call; calls are (late, milliseconds since the previous call)."""
    script = "".join(f"{int(late)} {ms}\n" for late, ms in calls)
    out = subprocess.run([str(driver), str(threads)], input=script, capture_output=True, text=True, check=True)
    return [int(line) for line in out.stdout.split()]


def on_time(n, ms=300):
    return [(False, ms)] * n


def test_calls_on_time_keep_the_full_team(driver):
    assert teams(driver, 2, on_time(20)) == [2] * 20


def test_a_late_call_leaves_a_thread_out_until_an_on_time_probe(driver):
    calls = [(True, 0)] + on_time(4) + [(True, 300)] + on_time(8) + on_time(3)
    assert teams(driver, 2, calls) == [2] + [1] * 4 + [2] + [1] * 8 + [2, 2, 2]


def test_late_probes_double_the_span_up_to_256_calls(driver):
    spans = [4, 8, 16, 32, 64, 128, 256, 256]
    calls, expected = [], []
    for span in spans:
        calls += [(True, 1)] + on_time(span, ms=1)
        expected += [2] + [1] * span
    assert teams(driver, 2, calls) == expected


def test_an_on_time_probe_resets_the_span(driver):
    calls = [(True, 1)] + on_time(4, 1) + [(True, 1)] + on_time(8, 1) + on_time(1, 1) + [(True, 1)] + on_time(5, 1)
    assert teams(driver, 2, calls) == [2] + [1] * 4 + [2] + [1] * 8 + [2] + [2] + [1] * 4 + [2]


def test_rare_calls_probe_after_ten_seconds(driver):
    calls = [(True, 0), (False, 9_000), (False, 1_001), (False, 1)]
    assert teams(driver, 2, calls) == [2, 1, 2, 2]


def test_late_reduced_teams_shrink_one_thread_at_a_time(driver):
    calls = [(True, 0), (True, 1), (True, 1)] + on_time(4, 1) + on_time(2, 1)
    assert teams(driver, 4, calls) == [4, 3, 2, 1, 1, 1, 1, 4, 4]
