/* Reading a PTX file into a NUL-terminated buffer, for the project's C test programs
 * (compile them with -I hal/kernels). */
#ifndef TF_READ_PTX_H
#define TF_READ_PTX_H
#include <stdio.h>
#include <stdlib.h>

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n + 1);
    if (fread(buf, 1, n, f) != (size_t)n) { fclose(f); free(buf); return NULL; }
    buf[n] = 0;
    fclose(f);
    return buf;
}
#endif
