/*
 * Runs the cases written by `cargo run --example capi_expected -- FILE` through the C API
 * and compares every output with what the Rust API computed: an LSTM (float, PyTorch
 * weights), a GRU (double, Keras weights) and a two-layer bidirectional GRU (float, PyTorch
 * weights per layer and direction): forward inference, forward training, backward data and
 * backward weights, plus a few calls that must fail with the documented status.
 *
 *   cc -std=c99 -Wall -Wextra -Iinclude examples/c/rnn_check.c target/release/libfused_rnn.a \
 *      -lm -lpthread -ldl -o rnn_check && ./rnn_check expected.txt
 *
 * Exit status 0 when every comparison holds.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fused_rnn.h"

/* One named section of the expected file, as doubles. */
typedef struct {
    size_t len;
    double *v;
} Section;

/* Sections of a case: per layer and direction w0..w3, then the eight below, then per layer
   and direction g0..g3. */
enum { X, HX, DY, DHY, Y, HY, DX, DHX, PLAIN };
static const char *const NAMES[PLAIN] = {"x", "hx", "dy", "dhy", "y", "hy", "dx", "dhx"};
enum { MAX_BLOCKS = 8 };

typedef struct {
    char name[64];
    unsigned cell, dtype, format, reset_after, layout;
    size_t i, h, t, b, layers, directions;
    Section w[MAX_BLOCKS][4], s[PLAIN], g[MAX_BLOCKS][4];
} Case;

static int failures = 0;

#define CHECK(call)                                                                          \
    do {                                                                                     \
        FrnnStatus st_ = (call);                                                             \
        if (st_ != FRNN_STATUS_OK) {                                                         \
            fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call,         \
                    frnn_status_name(st_), frnn_last_error_message());                       \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static void read_section(FILE *f, const Case *c, const char *want, Section *s) {
    char name[16];
    if (fscanf(f, " %15s %zu", name, &s->len) != 2 || strcmp(name, want) != 0) {
        fprintf(stderr, "%s: expected section %s\n", c->name, want);
        exit(2);
    }
    s->v = malloc((s->len + 1) * sizeof(double));
    for (size_t j = 0; j < s->len; j++)
        if (fscanf(f, " %lf", &s->v[j]) != 1) {
            fprintf(stderr, "%s: short section %s\n", c->name, want);
            exit(2);
        }
}

static size_t blocks(const Case *c) { return c->layers * c->directions; }

static int read_case(FILE *f, Case *c) {
    if (fscanf(f, " case %63s %u %u %u %u %u %zu %zu %zu %zu %zu %zu", c->name, &c->cell,
               &c->dtype, &c->format, &c->reset_after, &c->layout, &c->i, &c->h, &c->t, &c->b,
               &c->layers, &c->directions) != 12)
        return 0;
    if (blocks(c) > MAX_BLOCKS) {
        fprintf(stderr, "%s: too many layers\n", c->name);
        exit(2);
    }
    static const char *const W[4] = {"w0", "w1", "w2", "w3"}, *const G[4] = {"g0", "g1", "g2", "g3"};
    for (size_t k = 0; k < blocks(c); k++)
        for (int j = 0; j < 4; j++) read_section(f, c, W[j], &c->w[k][j]);
    for (int k = 0; k < PLAIN; k++) read_section(f, c, NAMES[k], &c->s[k]);
    for (size_t k = 0; k < blocks(c); k++)
        for (int j = 0; j < 4; j++) read_section(f, c, G[j], &c->g[k][j]);
    return 1;
}

static void free_case(Case *c) {
    for (size_t k = 0; k < blocks(c); k++)
        for (int j = 0; j < 4; j++) free(c->w[k][j].v), free(c->g[k][j].v);
    for (int k = 0; k < PLAIN; k++) free(c->s[k].v);
}

/* A buffer of the case's dtype holding a section (or `len` zeros when `s` is NULL). */
static void *buffer(const Case *c, const Section *s, size_t len) {
    size_t n = s ? s->len : len;
    size_t el = c->dtype == FRNN_DTYPE_F32 ? sizeof(float) : sizeof(double);
    void *p = calloc(n + 1, el);
    for (size_t j = 0; s && j < n; j++) {
        if (c->dtype == FRNN_DTYPE_F32)
            ((float *)p)[j] = (float)s->v[j];
        else
            ((double *)p)[j] = s->v[j];
    }
    return p;
}

static double at(const Case *c, const void *p, size_t j) {
    return c->dtype == FRNN_DTYPE_F32 ? (double)((const float *)p)[j] : ((const double *)p)[j];
}

/* Compares `len` elements of `got` with section `want`; the tolerance covers only the decimal
   round trip of the expected file (which is exact), so the expected difference is 0. */
static void compare(const Case *c, const char *what, const void *got, size_t len,
                    const Section *want) {
    if (len != want->len) {
        fprintf(stderr, "%s %s: length %zu, expected %zu\n", c->name, what, len, want->len);
        failures++;
        return;
    }
    double worst = 0.0;
    for (size_t j = 0; j < len; j++) {
        double d = fabs(at(c, got, j) - want->v[j]);
        if (!(d <= worst)) worst = d; /* NaN counts as the worst */
    }
    int ok = worst == 0.0;
    printf("%-16s %-22s %5zu values, max |diff| %.3g%s\n", c->name, what, len, worst,
           ok ? "" : "  <-- MISMATCH");
    if (!ok) failures++;
}

static FrnnTensor in(const void *p, size_t len) {
    FrnnTensor t = {len ? p : NULL, len};
    return t;
}
static FrnnTensorMut out(void *p, size_t len) {
    FrnnTensorMut t = {len ? p : NULL, len};
    return t;
}

static void run_case(const Case *c) {
    FrnnRnnConfig cfg;
    CHECK(frnn_rnn_config_init(&cfg, c->cell));
    cfg.dtype = c->dtype;
    cfg.gru_reset_after = c->reset_after;
    cfg.input_size = c->i;
    cfg.hidden_size = c->h;
    cfg.num_layers = c->layers;
    cfg.num_directions = c->directions;
    FrnnRnnDesc *desc = NULL;
    CHECK(frnn_rnn_desc_create(&cfg, &desc));

    FrnnSeqConfig seq = {c->t, c->b, c->layout, 0, 1, 2};
    FrnnSizes n;
    CHECK(frnn_get_sizes(desc, &seq, &n));

    /* Weights from the framework layout into the weight space, layer by layer and direction
       by direction. */
    void *ws = buffer(c, NULL, n.weight_space);
    for (size_t k = 0; k < blocks(c); k++) {
        const Section *t = c->w[k];
        void *w[4];
        for (int j = 0; j < 4; j++) w[j] = buffer(c, &t[j], 0);
        FrnnWeightTensors src = {in(w[0], t[0].len), in(w[1], t[1].len), in(w[2], t[2].len),
                                 in(w[3], t[3].len)};
        CHECK(frnn_set_weights(desc, c->format, k / c->directions, k % c->directions, &src,
                               out(ws, n.weight_space)));
        for (int j = 0; j < 4; j++) free(w[j]);
    }

    void *x = buffer(c, &c->s[X], 0), *hx = buffer(c, &c->s[HX], 0);
    void *dy = buffer(c, &c->s[DY], 0), *dhy = buffer(c, &c->s[DHY], 0);
    void *y = buffer(c, NULL, n.y), *hy = buffer(c, NULL, n.state);
    void *work = buffer(c, NULL, n.workspace), *reserve = buffer(c, NULL, n.reserve);
    FrnnTensor hx_t = in(hx, c->s[HX].len), dhy_t = in(dhy, c->s[DHY].len);

    CHECK(frnn_forward_inference(desc, &seq, in(ws, n.weight_space), in(x, n.x), hx_t,
                                 out(y, n.y), out(hy, n.state), out(work, n.workspace)));
    compare(c, "inference y", y, n.y, &c->s[Y]);
    compare(c, "inference hy", hy, n.state, &c->s[HY]);

    memset(y, 0, n.y * (c->dtype == FRNN_DTYPE_F32 ? 4 : 8));
    CHECK(frnn_forward_training(desc, &seq, in(ws, n.weight_space), in(x, n.x), hx_t,
                                out(y, n.y), out(hy, n.state), out(work, n.workspace),
                                out(reserve, n.reserve)));
    compare(c, "training y", y, n.y, &c->s[Y]);

    void *dx = buffer(c, NULL, n.x), *dhx = buffer(c, NULL, n.state);
    void *dw = buffer(c, NULL, n.weight_space);
    CHECK(frnn_backward_data(desc, &seq, in(ws, n.weight_space), in(x, n.x), hx_t,
                             in(reserve, n.reserve), in(dy, n.y), dhy_t, out(dx, n.x),
                             out(dhx, n.state), out(work, n.workspace)));
    compare(c, "backward_data dx", dx, n.x, &c->s[DX]);
    compare(c, "backward_data dhx", dhx, n.state, &c->s[DHX]);
    CHECK(frnn_backward_weights(desc, &seq, in(ws, n.weight_space), in(x, n.x), hx_t,
                                in(reserve, n.reserve), in(dy, n.y), dhy_t,
                                out(dw, n.weight_space), FRNN_GRAD_MODE_OVERWRITE,
                                out(work, n.workspace)));

    /* Weight gradients back in the framework layout. */
    for (size_t k = 0; k < blocks(c); k++) {
        size_t layer = k / c->directions, dir = k % c->directions, lens[4];
        CHECK(frnn_get_weight_tensor_lens(desc, c->format, layer, lens));
        void *g[4];
        for (int j = 0; j < 4; j++) g[j] = buffer(c, NULL, lens[j]);
        FrnnWeightTensorsMut dst = {out(g[0], lens[0]), out(g[1], lens[1]), out(g[2], lens[2]),
                                    out(g[3], lens[3])};
        CHECK(frnn_get_weight_grads(desc, c->format, layer, dir, in(dw, n.weight_space), &dst));
        for (int j = 0; j < 4; j++) {
            char what[48];
            snprintf(what, sizeof what, "dw l%zu d%zu g%d", layer, dir, j);
            compare(c, what, g[j], lens[j], &c->g[k][j]);
            free(g[j]);
        }
    }

    /* Calls that must fail, with a message. */
    FrnnStatus st = frnn_forward_inference(desc, &seq, in(ws, n.weight_space), in(x, n.x - 1),
                                           hx_t, out(y, n.y), out(hy, n.state),
                                           out(work, n.workspace));
    printf("%-16s short x -> %s: %s\n", c->name, frnn_status_name(st), frnn_last_error_message());
    if (st != FRNN_STATUS_BAD_SIZE) failures++;
    st = frnn_forward_inference(desc, NULL, in(ws, n.weight_space), in(x, n.x), hx_t,
                                out(y, n.y), out(hy, n.state), out(work, n.workspace));
    printf("%-16s null seq -> %s: %s\n", c->name, frnn_status_name(st),
           frnn_last_error_message());
    if (st != FRNN_STATUS_NULL_POINTER) failures++;
    FrnnRnnConfig bad = cfg;
    bad.num_directions = 3;
    FrnnRnnDesc *none = NULL;
    st = frnn_rnn_desc_create(&bad, &none);
    printf("%-16s 3 directions -> %s: %s\n", c->name, frnn_status_name(st),
           frnn_last_error_message());
    if (st != FRNN_STATUS_BAD_VALUE || none != NULL) failures++;

    frnn_rnn_desc_destroy(desc);
    free(ws), free(x), free(hx), free(dy), free(dhy), free(y), free(hy);
    free(work), free(reserve), free(dx), free(dhx), free(dw);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s EXPECTED.txt\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    printf("fused-rnn %s\n", frnn_version());
    int cases = 0;
    Case c;
    while (memset(&c, 0, sizeof c), read_case(f, &c)) {
        run_case(&c);
        free_case(&c);
        cases++;
    }
    fclose(f);
    printf("%d case(s), %d failure(s)\n", cases, failures);
    return failures == 0 && cases == 3 ? 0 : 1;
}
