/* Prints this host's TSC rate in kHz (built static by clawpen.staticbin).
 *
 * Under TCG a guest's TSC is the host's, and Linux calibrates it against the emulated PIT: when
 * the VM's CPU quota pauses QEMU in the middle of that window the calibration fails and the
 * guest hangs in its delay loop. clawpen measures the rate here once and hands it to the guest
 * (tsc_early_khz=), which then skips the calibration.
 *
 * Each end of a window is a (time, TSC) pair read back to back, kept only when the two clock
 * reads around the TSC read are within 20 us: a preemption between them would skew the pair,
 * one between the ends only lengthens the window. The median of 7 windows is printed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <x86intrin.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sample(double *t, uint64_t *c) {
    for (int tries = 0; tries < 10000; tries++) {
        double a = now();
        uint64_t tsc = __rdtsc();
        double b = now();
        if (b - a < 20e-6 || tries == 9999) {
            *t = (a + b) / 2;
            *c = tsc;
            return;
        }
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void) {
    double rates[7];
    for (int round = 0; round < 7; round++) {
        double t0, t1;
        uint64_t c0, c1;
        sample(&t0, &c0);
        while (now() - t0 < 0.03) {
        }
        sample(&t1, &c1);
        rates[round] = (double)(c1 - c0) / (t1 - t0) / 1000.0;
    }
    qsort(rates, 7, sizeof rates[0], cmp);
    printf("%.0f\n", rates[3]);
    return 0;
}
