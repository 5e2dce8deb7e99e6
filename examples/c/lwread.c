/*
 * lwread: read a `lazyweights export` directory from C, with no library but libc.
 *
 *   lazyweights export model.h5 out/ --format bin      (or: lw.export("model.h5", "out/"))
 *   cc -O2 -std=c99 -o lwread lwread.c && ./lwread out/ [count]
 *
 * For every weight listed in out/manifest.json it reads the weight's bytes
 * (file, offset, nbytes: works for per-weight .bin/.npy files and for a packed
 * weights.bin), checks their SHA-256 against the manifest, and prints
 *
 *   key <TAB> dtype <TAB> shape <TAB> sha256 <TAB> ok|MISMATCH <TAB> first `count` values (%.6g / %lld)
 *
 * Exit status: 0 when every checksum matches, 1 on a mismatch, 2 on an error.
 * Bytes are little-endian, C order; bfloat16 and float16 are widened to float.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a minimal JSON reader (objects, arrays, strings, numbers, literals) ---- */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };
typedef struct json {
    int type, n;
    double num;
    char *str;
    char **keys;         /* J_OBJ: n keys */
    struct json *items;  /* J_ARR / J_OBJ: n values */
} json;

static const char *jp; /* parse cursor */

static void die(const char *what) { fprintf(stderr, "lwread: %s\n", what); exit(2); }
static void skip_ws(void) { while (*jp == ' ' || *jp == '\n' || *jp == '\r' || *jp == '\t') jp++; }

static char *parse_string(void) {
    char *out = malloc(strlen(jp) + 1), *o = out;
    if (!out) die("out of memory");
    jp++; /* opening quote */
    while (*jp && *jp != '"') {
        if (*jp != '\\') { *o++ = *jp++; continue; }
        jp++;
        switch (*jp) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': { /* BMP code point -> UTF-8 (surrogate pairs are not needed for weight names) */
            unsigned cp = (unsigned)strtoul((char[5]){jp[1], jp[2], jp[3], jp[4], 0}, NULL, 16);
            if (cp < 0x80) *o++ = (char)cp;
            else if (cp < 0x800) { *o++ = (char)(0xC0 | cp >> 6); *o++ = (char)(0x80 | (cp & 0x3F)); }
            else { *o++ = (char)(0xE0 | cp >> 12); *o++ = (char)(0x80 | ((cp >> 6) & 0x3F)); *o++ = (char)(0x80 | (cp & 0x3F)); }
            jp += 4;
            break;
        }
        default: *o++ = *jp; /* \" \\ \/ */
        }
        jp++;
    }
    if (*jp != '"') die("manifest.json: unterminated string");
    jp++;
    *o = 0;
    return out;
}

static void parse_value(json *v);

static void parse_container(json *v, char close) {
    int cap = 8;
    v->items = malloc(cap * sizeof(json));
    v->keys = close == '}' ? malloc(cap * sizeof(char *)) : NULL;
    jp++;
    skip_ws();
    while (*jp && *jp != close) {
        if (v->n == cap) {
            cap *= 2;
            v->items = realloc(v->items, cap * sizeof(json));
            if (v->keys) v->keys = realloc(v->keys, cap * sizeof(char *));
        }
        if (close == '}') {
            if (*jp != '"') die("manifest.json: expected a key");
            v->keys[v->n] = parse_string();
            skip_ws();
            if (*jp++ != ':') die("manifest.json: expected ':'");
        }
        parse_value(&v->items[v->n++]);
        skip_ws();
        if (*jp == ',') { jp++; skip_ws(); }
    }
    if (*jp != close) die("manifest.json: unterminated array or object");
    jp++;
}

static void parse_value(json *v) {
    memset(v, 0, sizeof *v);
    skip_ws();
    if (*jp == '{') { v->type = J_OBJ; parse_container(v, '}'); }
    else if (*jp == '[') { v->type = J_ARR; parse_container(v, ']'); }
    else if (*jp == '"') { v->type = J_STR; v->str = parse_string(); }
    else if (!strncmp(jp, "true", 4)) { v->type = J_BOOL; v->num = 1; jp += 4; }
    else if (!strncmp(jp, "false", 5)) { v->type = J_BOOL; jp += 5; }
    else if (!strncmp(jp, "null", 4)) { v->type = J_NULL; jp += 4; }
    else { char *end; v->type = J_NUM; v->num = strtod(jp, &end); if (end == jp) die("manifest.json: bad value"); jp = end; }
}

static const json *get(const json *obj, const char *key) {
    for (int i = 0; obj->type == J_OBJ && i < obj->n; i++)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    fprintf(stderr, "lwread: manifest.json: missing \"%s\"\n", key);
    exit(2);
}

/* ---- SHA-256 (FIPS 180-4) ---- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | p[4 * i + 1] << 16 | p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void sha256_hex(const unsigned char *data, size_t n, char out[65]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char tail[128] = {0};
    size_t full = n / 64 * 64, rest = n - full, tail_len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (size_t i = 0; i < full; i += 64) sha256_block(h, data + i);
    memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    for (int i = 0; i < 8; i++) tail[tail_len - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t i = 0; i < tail_len; i += 64) sha256_block(h, tail + i);
    for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", h[i]);
}

/* ---- values ---- */

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) bits = sign | 0x7F800000 | man << 13;            /* inf / nan */
    else if (exp) bits = sign | (exp + 112) << 23 | man << 13;        /* normal */
    else if (!man) bits = sign;                                       /* zero */
    else {                                                            /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | exp << 23 | (man & 0x3FF) << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void print_value(const char *dtype, const unsigned char *p) {
    if (!strcmp(dtype, "float32")) { float f; memcpy(&f, p, 4); printf("%.6g", f); }
    else if (!strcmp(dtype, "float64")) { double d; memcpy(&d, p, 8); printf("%.6g", d); }
    else if (!strcmp(dtype, "float16")) printf("%.6g", half_to_float((uint16_t)(p[0] | p[1] << 8)));
    else if (!strcmp(dtype, "bfloat16")) { uint32_t b = (uint32_t)(p[0] | p[1] << 8) << 16; float f; memcpy(&f, &b, 4); printf("%.6g", f); }
    else if (!strcmp(dtype, "int8")) printf("%d", (int8_t)p[0]);
    else if (!strcmp(dtype, "uint8") || !strcmp(dtype, "bool")) printf("%u", p[0]);
    else if (!strcmp(dtype, "int16")) { int16_t v; memcpy(&v, p, 2); printf("%d", v); }
    else if (!strcmp(dtype, "int32")) { int32_t v; memcpy(&v, p, 4); printf("%d", v); }
    else if (!strcmp(dtype, "int64")) { int64_t v; memcpy(&v, p, 8); printf("%lld", (long long)v); }
    else if (!strcmp(dtype, "uint16")) { uint16_t v; memcpy(&v, p, 2); printf("%u", v); }
    else if (!strcmp(dtype, "uint32")) { uint32_t v; memcpy(&v, p, 4); printf("%u", v); }
    else if (!strcmp(dtype, "uint64")) { uint64_t v; memcpy(&v, p, 8); printf("%llu", (unsigned long long)v); }
    else printf("?");
}

static int itemsize(const char *dtype) {
    if (!strcmp(dtype, "complex128")) return 16;
    if (strstr(dtype, "64")) return 8;
    if (strstr(dtype, "32")) return 4;
    if (strstr(dtype, "16")) return 2;
    return 1;
}

static unsigned char *read_range(const char *dir, const char *file, long offset, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "rb");
    unsigned char *buf = malloc(n ? n : 1);
    if (!f || !buf || fseek(f, offset, SEEK_SET) || fread(buf, 1, n, f) != n) {
        fprintf(stderr, "lwread: cannot read %zu bytes at offset %ld of %s\n", n, offset, path);
        exit(2);
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s EXPORT_DIR [count]\n", argv[0]); return 2; }
    int count = argc > 2 ? atoi(argv[2]) : 3, mismatches = 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", argv[1]);
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "lwread: cannot open %s\n", path); return 2; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc(size + 1);
    if (!text || fread(text, 1, size, f) != (size_t)size) die("cannot read manifest.json");
    text[size] = 0;
    fclose(f);
    json root;
    jp = text;
    parse_value(&root);
    if (!strcmp(get(&root, "file_format")->str, "txt")) die("a txt export has no binary data to check");
    const json *weights = get(&root, "weights");
    for (int i = 0; i < weights->n; i++) {
        const json *w = &weights->items[i], *shape = get(w, "shape");
        const char *dtype = get(w, "dtype")->str;
        size_t nbytes = (size_t)get(w, "nbytes")->num;
        unsigned char *data = read_range(argv[1], get(w, "file")->str, (long)get(w, "offset")->num, nbytes);
        char hex[65];
        sha256_hex(data, nbytes, hex);
        int ok = !strcmp(hex, get(w, "sha256")->str);
        mismatches += !ok;
        printf("%s\t%s\t[", get(w, "key")->str, dtype);
        for (int d = 0; d < shape->n; d++) printf(d ? ",%.0f" : "%.0f", shape->items[d].num);
        printf("]\t%s\t%s\t", hex, ok ? "ok" : "MISMATCH");
        size_t n = nbytes / itemsize(dtype);
        for (size_t j = 0; j < n && (int)j < count; j++) {
            if (j) putchar(' ');
            print_value(dtype, data + j * itemsize(dtype));
        }
        putchar('\n');
        free(data);
    }
    return mismatches ? 1 : 0;
}
