/* Minimal stand-in for <stdlib.h>: the generator parses cuda.h without the system headers. */
typedef unsigned long size_t;
