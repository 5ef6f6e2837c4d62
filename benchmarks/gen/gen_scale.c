/* The data of `make bench-scale` (benchmarks/bench_scale.py), written fast: a C loop, not a Python one.

   gen_scale profiles N FILE          guid,identity,channels: profile k (0 <= k < N) has guid G(k) and
                                      identity "c<k>"; channels cycle email, sms, push, "", email;push
   gen_scale upload N M MIXED FILE    Type,Identity: M rows. Row i: i % 20 == 0 names an unknown guid
                                      G(N + i / 20); i % 20 == 1 names profile (i / 20) % K again (a
                                      duplicate); otherwise profile j, the j-th such row (j < K), so the
                                      known rows are distinct. K = the number of those rows. MIXED=1: odd
                                      known rows by identity ("i,c<k>"), the rest by guid.
   G(k) is 32 hex digits of two splitmix64 mixes of k: keys in random order, as real guids are.
   bench_scale.py computes the expected counts with the same rules (expected_counts). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static char *put_guid(char *p, uint64_t k) {
  static const char hex[] = "0123456789abcdef";
  uint64_t a = mix(k), b = mix(k ^ 0x5bd1e9955bd1e995ULL);
  for (int s = 60; s >= 0; s -= 4) *p++ = hex[(a >> s) & 15];
  for (int s = 60; s >= 0; s -= 4) *p++ = hex[(b >> s) & 15];
  return p;
}

static char *put_uint(char *p, uint64_t v) {
  char tmp[24];
  int n = 0;
  do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (n) *p++ = tmp[--n];
  return p;
}

#define BUF (8 << 20)

int main(int argc, char **argv) {
  static const char *chans[] = {"email", "sms", "push", "", "email;push"};
  if (argc < 4) {
    fprintf(stderr, "usage: gen_scale profiles N FILE | gen_scale upload N M MIXED FILE\n");
    return 2;
  }
  int profiles = strcmp(argv[1], "profiles") == 0;
  uint64_t n = strtoull(argv[2], NULL, 10);
  uint64_t m = profiles ? 0 : strtoull(argv[3], NULL, 10);
  int mixed = profiles ? 0 : atoi(argv[4]);
  FILE *f = fopen(argv[profiles ? 3 : 5], "wb");
  if (!f) { perror("fopen"); return 1; }
  char *buf = malloc(BUF + 4096), *p = buf;
  if (!buf) return 1;
  p += sprintf(p, profiles ? "guid,identity,channels\n" : "Type,Identity\n");
  uint64_t rows = profiles ? n : m, known = 0;
  uint64_t k_rows = m - (m + 19) / 20 - (m + 18) / 20;   /* rows with i % 20 >= 2 */
  for (uint64_t i = 0; i < rows; i++) {
    if (profiles) {
      p = put_guid(p, i);
      *p++ = ','; *p++ = 'c'; p = put_uint(p, i); *p++ = ',';
      const char *c = chans[i % 5];
      size_t cl = strlen(c);
      memcpy(p, c, cl); p += cl;
    } else {
      uint64_t k;
      int by_identity = 0;
      if (i % 20 == 0) {
        k = n + i / 20;
      } else if (i % 20 == 1) {
        k = k_rows ? (i / 20) % k_rows : 0;
      } else {
        k = known++;
        by_identity = mixed && (k & 1);
      }
      if (by_identity) { *p++ = 'i'; *p++ = ','; *p++ = 'c'; p = put_uint(p, k); }
      else { *p++ = 'g'; *p++ = ','; p = put_guid(p, k); }
    }
    *p++ = '\n';
    if (p - buf >= BUF) {
      if (fwrite(buf, 1, (size_t)(p - buf), f) != (size_t)(p - buf)) { perror("fwrite"); return 1; }
      p = buf;
    }
  }
  if (fwrite(buf, 1, (size_t)(p - buf), f) != (size_t)(p - buf) || fclose(f)) { perror("write"); return 1; }
  return 0;
}
