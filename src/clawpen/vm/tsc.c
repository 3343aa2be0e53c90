/* Prints this host's TSC rate in kHz (built static by clawpen.staticbin).
 *
 * Under TCG a guest's TSC is the host's, and Linux calibrates it against the emulated PIT: when
 * the VM's CPU quota pauses QEMU in the middle of that window the calibration fails and the
 * guest hangs in its delay loop. clawpen measures the rate here once and hands it to the guest
 * (tsc_early_khz=), which then skips the calibration. */
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <x86intrin.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void) {
    double best = 0;
    for (int round = 0; round < 3; round++) {
        double t0 = now();
        uint64_t c0 = __rdtsc();
        double t1;
        do {
            t1 = now();
        } while (t1 - t0 < 0.05);
        uint64_t c1 = __rdtsc();
        double khz = (double)(c1 - c0) / (t1 - t0) / 1000.0;
        if (round == 0 || khz < best) best = khz; /* a preemption only ever adds time */
    }
    printf("%.0f\n", best);
    return 0;
}
