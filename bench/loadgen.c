/* Load generator for the roomchat benchmark: many WebSocket clients on one epoll loop, in C.
 *
 * It exists so that the generator is never what limits a figure: one thread, non-blocking
 * sockets, level-triggered epoll, reads into one shared buffer, writes gathered per connection
 * and flushed once per loop turn. It speaks the same JSON lines to the driver (run.py) as
 * loadgen.py and takes the same options, plus --linger-us.
 *
 * Every chat delivery is checked: per client, seq must rise by exactly 1 from the first one seen
 * (a jump counts the skipped seqs as missing, a lower seq as reordered), the event must name the
 * client's room, and after the run each client's last seq is compared with the highest any member
 * of its room saw, so a lost tail counts as missing too.
 *
 * Two framings: roomchat's (JSON in text frames, the reference and Bun speak it too) and
 * Socket.IO's (Engine.IO 4 over WebSocket: open "0", connect "40", ping "2" / pong "3", events
 * as 42["msg",{...}]), chosen by the URL's path: /socket.io/ means Socket.IO.
 *
 * Waking less: on loopback, a reader blocked in epoll_wait is woken from the writer's own
 * system call, so a generator that sleeps after every message makes the server pay for its
 * wake-ups. With --linger-us N (saturate mode) the loop, finding nothing to read, keeps polling
 * for up to N µs before it blocks, so the server's writes queue up meanwhile and are read in
 * batches without a wake-up each. That polling is reported apart (loadgen_spin_s) and left out
 * of the generator's CPU share, which says whether the generator set the pace.
 *
 * Build: gcc -O2 -o loadgen loadgen.c (run.py does it into bench/.build/).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define STAMP_DIGITS 19 /* the send time in a chat text: t=<19 digits>; */
#define MAX_EVENTS 1024
#define MAX_NOTES 20
#define MAX_TARGETS 16

enum { S_CONNECTING, S_HANDSHAKE, S_WELCOME, S_JOINING, S_JOINED, S_CLOSED };

typedef struct {
    unsigned char *p;
    size_t len, cap;
} Buf;

typedef struct {
    int fd, target, room, state, sender, failed_open, dirty, want_out;
    unsigned char mask[4];
    char accept[32];
    Buf head, pend, frag, out;
    size_t out_off;
    int64_t next_seq; /* -1: nothing seen yet */
    int64_t deliveries, reads, missing, reordered, errors;
    int64_t msg_id, inflight;
    double open_deadline;
    char room_json[16]; /* "r<N>" with its quotes, as the server writes the room's name */
    int room_json_len;
} Conn;

typedef struct {
    char host[64];
    int port;
    char path[128];
    int sio;
} Target;

/* options */
static Target targets[MAX_TARGETS];
static int ntargets;
static const char *mode = "saturate";
static int rooms = 1, clients_per_room = 50, senders_per_room = 10, inflight_max = 8;
static double rate = 1500, warmup = 2.0, duration = 5.0, connect_timeout = 30.0, probe_interval = 0.1;
static int text_len = 48, concurrency = 200, probes = 20, linger_us = 0;

/* state */
static Conn *conns;
static int nconns;
static int *senders, nsenders;
static int epfd;
static int sending;
static int go_received;
static int closed_by_server, connect_failures;
static Buf rbuf;
static char *pad;
static int padlen;
static int64_t *lat, nlat, latcap;
static int recording;
static double spin_s; /* CPU seconds spent polling an empty epoll with --linger-us */
static int *dirty_list, ndirty;
static struct { char text[200]; int count; } notes[MAX_NOTES];
static int nnotes;

/* -- small helpers ------------------------------------------------------------------------ */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(double *user) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double u = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    if (user) *user = u;
    return u + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *why) {
    fprintf(stderr, "loadgen: %s\n", why);
    exit(2);
}

static void buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) die("out of memory");
    b->cap = cap;
}

static void buf_add(Buf *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_free(Buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static void note(const char *fmt, ...) {
    char text[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    for (int i = 0; i < nnotes; i++)
        if (!strcmp(notes[i].text, text)) {
            notes[i].count++;
            return;
        }
    if (nnotes < MAX_NOTES) {
        strcpy(notes[nnotes].text, text);
        notes[nnotes++].count = 1;
    }
}

static void json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void printable(char *dst, size_t cap, const unsigned char *src, size_t n) {
    size_t j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) dst[j++] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '.';
    dst[j] = 0;
}

/* -- SHA-1 and base64, for the handshake's Sec-WebSocket-Accept ------------------------------ */

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *m = calloc(total, 1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = bits >> (8 * i);
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | m[off + 4 * i + 1] << 16 | m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = h[i] >> (24 - 8 * j);
}

static void base64(const unsigned char *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[j++] = t[v >> 18 & 63];
        out[j++] = t[v >> 12 & 63];
        out[j++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[j++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[j] = 0;
}

static void random_bytes(unsigned char *out, size_t n) {
    static int fd = -1;
    if (fd < 0) fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, out, n) != (ssize_t)n) die("cannot read /dev/urandom");
}

/* -- connections ---------------------------------------------------------------------------- */

static void mark_dirty(Conn *c) {
    if (!c->dirty) {
        c->dirty = 1;
        dirty_list[ndirty++] = c - conns;
    }
}

static void close_conn(Conn *c) {
    if (c->state == S_CLOSED) return;
    if (c->state != S_JOINED) {
        c->failed_open = 1;
        connect_failures++;
    }
    c->state = S_CLOSED;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    buf_free(&c->pend);
    buf_free(&c->frag);
    buf_free(&c->head);
    c->out.len = c->out_off = 0;
}

/* Queue one final, masked client frame; it is written at the end of the loop turn. */
static void send_frame(Conn *c, int opcode, const unsigned char *payload, size_t n) {
    if (c->state == S_CLOSED) return;
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = 0x80 | opcode;
    if (n < 126) hdr[h++] = 0x80 | n;
    else if (n < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = n >> 8;
        hdr[h++] = n & 255;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) hdr[h++] = (uint64_t)n >> (8 * i);
    }
    memcpy(hdr + h, c->mask, 4);
    h += 4;
    buf_add(&c->out, hdr, h);
    buf_reserve(&c->out, n);
    unsigned char *dst = c->out.p + c->out.len;
    for (size_t i = 0; i < n; i++) dst[i] = payload[i] ^ c->mask[i & 3];
    c->out.len += n;
    mark_dirty(c);
}

/* A text message in this connection's framing: Socket.IO wraps it as an event named "msg". */
static void send_message(Conn *c, const char *json, size_t n) {
    if (!targets[c->target].sio) {
        send_frame(c, 1, (const unsigned char *)json, n);
        return;
    }
    static Buf tmp;
    tmp.len = 0;
    buf_add(&tmp, "42[\"msg\",", 9);
    buf_add(&tmp, json, n);
    buf_add(&tmp, "]", 1);
    send_frame(c, 1, tmp.p, tmp.len);
}

static void send_chats(Conn *c, int count) {
    static Buf msg;
    for (int k = 0; k < count && c->state == S_JOINED; k++) {
        char stamp[STAMP_DIGITS], id[24];
        c->msg_id++;
        c->inflight++;
        int64_t t = now_ns(), v = c->msg_id;
        for (int i = STAMP_DIGITS - 1; i >= 0; i--, t /= 10) stamp[i] = '0' + t % 10;
        int idn = 0;
        do id[sizeof id - 1 - idn++] = '0' + v % 10; while ((v /= 10));
        msg.len = 0;
        buf_add(&msg, "{\"type\":\"chat\",\"room\":", 22);
        buf_add(&msg, c->room_json, c->room_json_len);
        buf_add(&msg, ",\"text\":\"t=", 11);
        buf_add(&msg, stamp, STAMP_DIGITS);
        buf_add(&msg, ";", 1);
        buf_add(&msg, pad, padlen);
        buf_add(&msg, "\",\"id\":", 7);
        buf_add(&msg, id + sizeof id - idn, idn);
        buf_add(&msg, "}", 1);
        send_message(c, (const char *)msg.p, msg.len);
    }
}

static void flush_conn(Conn *c) {
    while (c->out_off < c->out.len) {
        ssize_t n = write(c->fd, c->out.p + c->out_off, c->out.len - c->out_off);
        if (n > 0) {
            c->out_off += n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = c - conns};
                epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
                c->want_out = 1;
            }
            return;
        }
        note("write: %s", strerror(errno));
        close_conn(c);
        return;
    }
    c->out.len = c->out_off = 0;
    if (c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = c - conns};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = 0;
    }
}

static void flush_dirty(void) {
    for (int i = 0; i < ndirty; i++) {
        Conn *c = &conns[dirty_list[i]];
        c->dirty = 0;
        if (c->state != S_CLOSED) flush_conn(c);
    }
    ndirty = 0;
}

static void start_conn(Conn *c) {
    Target *t = &targets[c->target];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        note("socket: %s", strerror(errno));
        c->state = S_CONNECTING;
        c->fd = -1;
        c->failed_open = 1;
        connect_failures++;
        c->state = S_CLOSED;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(t->port)};
    inet_pton(AF_INET, t->host, &sa.sin_addr);
    c->state = S_CONNECTING;
    c->open_deadline = now_s() + connect_timeout;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = c - conns};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = 1;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        note("connect: %s", strerror(errno));
        close_conn(c);
    }
}

static void send_handshake(Conn *c) {
    Target *t = &targets[c->target];
    unsigned char raw[16], digest[20];
    char key[32], req[512];
    random_bytes(raw, 16);
    base64(raw, 16, key);
    char both[96];
    snprintf(both, sizeof both, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    sha1((unsigned char *)both, strlen(both), digest);
    base64(digest, 20, c->accept);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     t->path, t->host, t->port, key);
    buf_add(&c->out, req, n);
    c->state = S_HANDSHAKE;
    mark_dirty(c);
}

/* -- what the server says --------------------------------------------------------------------- */

/* What one message says, found in one pass over its quotes (no JSON parser, no search per field):
 * each '"' is looked at once, a key the generator checks is recognised by its first bytes, and a
 * chat text ("t=...") is skipped with one memchr, so a 32 KiB text costs no more than a short one. */
enum { T_OTHER, T_CHAT, T_WELCOME, T_JOINED, T_ERROR };
typedef struct {
    int type, room_ok;
    int64_t seq, id;
    const unsigned char *stamp; /* the 19 digits after "t=", or NULL */
} Fields;

static const unsigned char *skip_colon(const unsigned char *q, const unsigned char *e) {
    while (q < e && (*q == ':' || *q == ' ')) q++;
    return q;
}

static int64_t parse_int(const unsigned char **qp, const unsigned char *e) {
    const unsigned char *q = *qp;
    if (q >= e || *q < '0' || *q > '9') return INT64_MIN; /* null, a string, a negative: not ours */
    int64_t v = 0;
    while (q < e && *q >= '0' && *q <= '9') v = v * 10 + (*q++ - '0');
    *qp = q;
    return v;
}

static int starts(const unsigned char *q, const unsigned char *e, const char *lit, size_t n) {
    return (size_t)(e - q) >= n && !memcmp(q, lit, n);
}

static void scan(const Conn *c, const unsigned char *p, size_t n, Fields *f) {
    const unsigned char *q = p, *e = p + n;
    f->type = T_OTHER;
    f->room_ok = 0;
    f->seq = f->id = INT64_MIN;
    f->stamp = NULL;
    for (;;) {
        while (q < e && *q != '"') q++; /* fields are short: a loop beats a memchr call per quote */
        if (++q >= e) break;
        switch (*q) {
        case 't':
            if (starts(q, e, "type\"", 5)) {
                q = skip_colon(q + 5, e);
                if (q < e && *q == '"') {
                    q++;
                    if (starts(q, e, "chat\"", 5)) f->type = T_CHAT;
                    else if (starts(q, e, "welcome\"", 8)) f->type = T_WELCOME;
                    else if (starts(q, e, "joined\"", 7)) f->type = T_JOINED;
                    else if (starts(q, e, "error\"", 6)) f->type = T_ERROR;
                    const unsigned char *close = memchr(q, '"', e - q);
                    q = close ? close + 1 : e;
                }
            } else if (q + 1 < e && q[1] == '=') {
                if (q + 2 + STAMP_DIGITS <= e) f->stamp = q + 2;
                const unsigned char *close = memchr(q + 2, '"', e - q - 2); /* our texts hold no quotes */
                q = close ? close + 1 : e;
            }
            break;
        case 's':
            if (starts(q, e, "seq\"", 4)) {
                q = skip_colon(q + 4, e);
                f->seq = parse_int(&q, e);
            }
            break;
        case 'i':
            if (starts(q, e, "id\"", 3)) {
                q = skip_colon(q + 3, e);
                f->id = parse_int(&q, e);
            }
            break;
        case 'r':
            if (starts(q, e, "room\"", 5)) {
                q = skip_colon(q + 5, e);
                f->room_ok = starts(q, e, c->room_json, c->room_json_len);
                if (f->room_ok) q += c->room_json_len;
            }
            break;
        }
    }
}

static void opening_reply(Conn *c, const unsigned char *p, size_t n, const Fields *f) {
    if (c->state == S_WELCOME && f->type == T_WELCOME) {
        char join[64];
        int jn = snprintf(join, sizeof join, "{\"type\":\"join\",\"room\":%s}", c->room_json);
        send_message(c, join, jn);
        c->state = S_JOINING;
    } else if (c->state == S_JOINING && f->type == T_JOINED) {
        c->state = S_JOINED; /* chat events may follow in this very buffer */
    } else if (f->type == T_ERROR) {
        char text[160];
        printable(text, sizeof text, p, n);
        note("error while opening: %s", text);
        c->errors++;
        close_conn(c);
    }
}

/* One chat delivery (presence and the like are skipped). Returns 1 for our own echo. */
static int chat_event(Conn *c, const unsigned char *p, size_t n, int64_t now, const Fields *f) {
    if (f->type != T_CHAT || f->seq == INT64_MIN) {
        if (f->type == T_ERROR) {
            char t[160];
            printable(t, sizeof t, p, n < 150 ? n : 150);
            note("error event: %s", t);
            c->errors++;
        }
        return 0;
    }
    if (!f->room_ok) {
        note("chat event without this client's room");
        c->errors++;
        return 0;
    }
    int64_t seq = f->seq;
    if (c->next_seq < 0 || seq == c->next_seq) c->next_seq = seq + 1;
    else if (seq > c->next_seq) {
        c->missing += seq - c->next_seq;
        c->next_seq = seq + 1;
    } else c->reordered++;
    c->deliveries++;
    if (recording && f->stamp) {
        int64_t sent = 0;
        for (int i = 0; i < STAMP_DIGITS; i++) sent = sent * 10 + (f->stamp[i] - '0');
        if (nlat == latcap) {
            latcap = latcap ? latcap * 2 : 1 << 16;
            lat = realloc(lat, latcap * sizeof *lat);
        }
        lat[nlat++] = now - sent;
    }
    return c->sender && f->id > 0 && f->id <= c->msg_id;
}

/* A whole text message; Socket.IO's Engine.IO packets are unwrapped here. */
static int text_message(Conn *c, const unsigned char *p, size_t n, int64_t now) {
    if (targets[c->target].sio) {
        if (n >= 2 && p[0] == '4' && p[1] == '2') {
            p += 2;
            n -= 2;
        } else {
            if (n >= 1 && p[0] == '2') send_frame(c, 1, (const unsigned char *)"3", 1); /* ping */
            else if (n >= 1 && p[0] == '0') send_frame(c, 1, (const unsigned char *)"40", 2); /* open */
            else if (n >= 2 && p[0] == '4' && p[1] == '4') {
                note("socket.io connect refused");
                close_conn(c);
            }
            return 0;
        }
    }
    Fields f;
    scan(c, p, n, &f);
    if (c->state != S_JOINED) {
        opening_reply(c, p, n, &f);
        return 0;
    }
    return chat_event(c, p, n, now, &f);
}

static int other_frame(Conn *c, int b0, const unsigned char *p, size_t n, int64_t now) {
    int opcode = b0 & 15;
    if (opcode == 9) send_frame(c, 10, p, n);
    else if (opcode == 8) {
        char t[100];
        printable(t, sizeof t, p + (n >= 2 ? 2 : n), n >= 2 ? n - 2 : 0);
        note("server closed: %d %s", n >= 2 ? p[0] << 8 | p[1] : 1005, t);
        if (c->state == S_JOINED) closed_by_server++;
        send_frame(c, 8, p, n >= 2 ? 2 : 0);
        flush_conn(c);
        close_conn(c);
    } else if (opcode == 1 || opcode == 0) {
        if (opcode == 1) c->frag.len = 0;
        buf_add(&c->frag, p, n);
        if (b0 & 0x80) {
            int echo = text_message(c, c->frag.p, c->frag.len, now);
            c->frag.len = 0;
            return echo;
        }
    }
    return 0;
}

static void check_handshake(Conn *c, unsigned char *data, size_t n, size_t *used) {
    buf_add(&c->head, data, n);
    unsigned char *end = (unsigned char *)memmem(c->head.p, c->head.len, "\r\n\r\n", 4);
    *used = n;
    if (!end) return;
    size_t hlen = end - c->head.p;
    *used = n - (c->head.len - hlen - 4); /* bytes after the blank line are frames */
    if (c->head.len < 12 || memcmp(c->head.p + 8, " 101", 4)) {
        char t[120];
        printable(t, sizeof t, c->head.p, hlen < 100 ? hlen : 100);
        note("handshake: %s", t);
        close_conn(c);
        return;
    }
    char want[64];
    snprintf(want, sizeof want, ": %s\r", c->accept);
    unsigned char *a = (unsigned char *)memmem(c->head.p, hlen + 2, want + 2, strlen(want) - 3);
    if (!a) {
        note("handshake: wrong or missing Sec-WebSocket-Accept");
        close_conn(c);
        return;
    }
    buf_free(&c->head);
    c->state = S_WELCOME;
}

static void on_readable(Conn *c) {
    size_t have = c->pend.len;
    if (rbuf.cap < have + 262144) {
        rbuf.len = 0;
        buf_reserve(&rbuf, have + 262144);
    }
    if (have) memcpy(rbuf.p, c->pend.p, have);
    ssize_t got = read(c->fd, rbuf.p + have, rbuf.cap - have);
    if (got < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        note("read: %s", strerror(errno));
        close_conn(c);
        return;
    }
    if (got == 0) {
        if (c->state == S_JOINED) closed_by_server++;
        note("server closed the connection without a close frame");
        close_conn(c);
        return;
    }
    unsigned char *data = rbuf.p;
    size_t n = have + got, pos = 0;
    c->pend.len = 0;
    if (c->state == S_HANDSHAKE) {
        size_t used;
        check_handshake(c, data, n, &used);
        if (c->state != S_WELCOME) return;
        pos = used;
    }
    int64_t now = now_ns();
    c->reads++;
    int echoes = 0;
    while (pos < n && c->state != S_CLOSED) {
        if (n - pos < 2) break;
        int b0 = data[pos], b1 = data[pos + 1];
        if (b1 & 0x80) {
            note("masked frame from server");
            close_conn(c);
            return;
        }
        size_t len = b1 & 127, start = pos + 2;
        if (len == 126) {
            if (n - pos < 4) break;
            len = data[pos + 2] << 8 | data[pos + 3];
            start = pos + 4;
        } else if (len == 127) {
            if (n - pos < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | data[pos + 2 + i];
            start = pos + 10;
        }
        if (start + len > n) break;
        if (b0 == 0x81) echoes += text_message(c, data + start, len, now);
        else echoes += other_frame(c, b0, data + start, len, now);
        pos = start + len;
    }
    if (c->state != S_CLOSED && pos < n) buf_add(&c->pend, data + pos, n - pos);
    if (echoes) {
        c->inflight -= echoes;
        if (sending && c->state == S_JOINED) send_chats(c, echoes);
    }
}

/* -- the loop ----------------------------------------------------------------------------------- */

static void on_stdin(void) {
    char line[256];
    ssize_t n = read(0, line, sizeof line);
    go_received = n <= 0 ? 2 : 1; /* 2: the driver went away; go on all the same */
    epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL); /* one line is all it says */
}

static void handle_events(int timeout_ms) {
    static struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(epfd, evs, MAX_EVENTS, 0);
    if (n == 0 && linger_us > 0 && sending) {
        /* Nothing to read: poll on for up to linger_us before blocking. A reader that is not asleep
         * in epoll_wait is not woken by each of the server's writes, so the server pays for no
         * wake-ups and its writes queue up to be read in batches. The polling is idle time: it is
         * counted apart (spin_s) and left out of the generator's CPU share. */
        double t0 = now_s(), t = t0, cpu0 = thread_cpu_s();
        while (n == 0 && t - t0 < linger_us / 1e6) {
            n = epoll_wait(epfd, evs, MAX_EVENTS, 0);
            t = now_s();
        }
        spin_s += thread_cpu_s() - cpu0; /* CPU time: the core may have gone to other work meanwhile */
    }
    if (n == 0 && timeout_ms) n = epoll_wait(epfd, evs, MAX_EVENTS, timeout_ms);
    for (int i = 0; i < n; i++) {
        uint32_t id = evs[i].data.u32;
        if (id == UINT32_MAX) {
            on_stdin();
            continue;
        }
        Conn *c = &conns[id];
        if (c->state == S_CLOSED) continue;
        if (c->state == S_CONNECTING) {
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    note("connect: %s", strerror(err));
                    close_conn(c);
                    continue;
                }
                send_handshake(c);
            }
            continue;
        }
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
        if (c->state != S_CLOSED && (evs[i].events & EPOLLOUT)) mark_dirty(c);
    }
    flush_dirty();
}

static void run_for(double seconds) {
    double end = now_s() + seconds;
    double t;
    while ((t = now_s()) < end) {
        int ms = (int)((end - t) * 1000);
        handle_events(ms > 5 ? 5 : (ms < 1 ? 1 : ms));
    }
}

static int opened(Conn *c) { return c->state == S_JOINED || c->state == S_CLOSED; }

static void open_all(void) {
    int next = 0, active = 0;
    while (1) {
        while (next < nconns && active < concurrency) {
            start_conn(&conns[next++]);
            active++;
        }
        handle_events(5);
        double t = now_s();
        active = 0;
        for (int i = 0; i < next; i++) {
            Conn *c = &conns[i];
            if (opened(c)) continue;
            if (t > c->open_deadline) {
                note("connect: no joined reply within %.0f s", connect_timeout);
                close_conn(c);
                continue;
            }
            active++;
        }
        if (next == nconns && active == 0) break;
    }
    /* keep only the senders that made it */
    int k = 0;
    for (int i = 0; i < nsenders; i++)
        if (conns[senders[i]].state == S_JOINED) senders[k++] = senders[i];
    nsenders = k;
}

/* -- figures ----------------------------------------------------------------------------------- */

typedef struct {
    int64_t deliveries, reads, missing, reordered, errors, sent;
    double cpu, user, wall, spin;
} Totals;

static Totals totals(void) {
    Totals t = {0};
    for (int i = 0; i < nconns; i++) {
        Conn *c = &conns[i];
        if (c->failed_open) continue;
        t.deliveries += c->deliveries;
        t.reads += c->reads;
        t.missing += c->missing;
        t.reordered += c->reordered;
        t.errors += c->errors;
        t.sent += c->sender ? c->msg_id : 0;
    }
    t.cpu = cpu_s(&t.user);
    t.wall = now_s();
    t.spin = spin_s;
    return t;
}

static int held(void) {
    int h = 0;
    for (int i = 0; i < nconns; i++) h += conns[i].state == S_JOINED;
    return h;
}

static void print_opened(FILE *f, int wanted, int h, double connect_s) {
    fprintf(f, "\"wanted\": %d, \"held\": %d, \"held_per_server\": [", wanted, h);
    for (int t = 0; t < ntargets; t++) {
        int k = 0;
        for (int i = 0; i < nconns; i++) k += conns[i].target == t && conns[i].state == S_JOINED;
        fprintf(f, "%s%d", t ? ", " : "", k);
    }
    fprintf(f, "], \"connect_failures\": %d, \"connect_s\": %.2f", connect_failures, connect_s);
}

static void mark(const char *name, Totals *out) {
    if (out) *out = totals();
    printf("{\"event\": \"mark\", \"name\": \"%s\"}\n", name);
    fflush(stdout);
}

/* The window's rates. The generator's CPU share leaves out the time it spent polling an empty
 * epoll (--linger-us): that is waiting, not work, and says nothing about who set the pace. */
static void print_window(FILE *f, Totals *a, Totals *b) {
    double wall = b->wall - a->wall, spin = b->spin - a->spin, cpu = b->cpu - a->cpu - spin;
    int64_t d = b->deliveries - a->deliveries, reads = b->reads - a->reads;
    fprintf(f,
            ", \"window_s\": %.3f, \"deliveries\": %lld, \"deliveries_per_s\": %.1f, \"sent_per_s\": %.1f, "
            "\"deliveries_per_read\": %.2f, \"loadgen_cpu_s\": %.3f, \"loadgen_spin_s\": %.3f, "
            "\"loadgen_user_s\": %.3f, \"loadgen_cpu_pct\": %.1f, \"loadgen_limited\": %s",
            wall, (long long)d, d / wall, (b->sent - a->sent) / wall, reads ? (double)d / reads : 0.0, cpu, spin,
            b->user - a->user, 100 * cpu / wall, cpu / wall > 0.9 ? "true" : "false");
}

static int settle(double timeout) {
    double deadline = now_s() + timeout, quiet_since = now_s();
    int64_t last = -1;
    while (now_s() < deadline) {
        run_for(0.05);
        int64_t total = totals().deliveries;
        if (total != last) {
            last = total;
            quiet_since = now_s();
            continue;
        }
        int busy = 0;
        for (int i = 0; i < nsenders; i++) busy |= conns[senders[i]].inflight > 0 && conns[senders[i]].state == S_JOINED;
        if (now_s() - quiet_since > 0.3 && !busy) return 1;
    }
    return 0;
}

static void print_checks(FILE *f, int settled) {
    Totals t = totals();
    int64_t *highest = calloc(rooms, sizeof *highest);
    for (int i = 0; i < nconns; i++)
        if (!conns[i].failed_open && conns[i].next_seq > highest[conns[i].room]) highest[conns[i].room] = conns[i].next_seq;
    int64_t tail = 0;
    int silent = 0;
    for (int i = 0; i < nconns; i++) {
        Conn *c = &conns[i];
        if (c->failed_open) continue;
        if (c->next_seq < 0) silent++;
        else tail += highest[c->room] - c->next_seq;
    }
    free(highest);
    fprintf(f,
            ", \"missing\": %lld, \"missing_tail\": %lld, \"reordered\": %lld, \"errors\": %lld, "
            "\"silent_clients\": %d, \"settled\": %s, \"total_deliveries\": %lld, \"total_sent\": %lld",
            (long long)(t.missing + tail), (long long)tail, (long long)t.reordered, (long long)t.errors, silent,
            settled ? "true" : "false", (long long)t.deliveries, (long long)t.sent);
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void print_percentiles(FILE *f, const char *key, int64_t *v, int64_t n) {
    if (!n) {
        fprintf(f, ", \"%s\": null", key);
        return;
    }
    qsort(v, n, sizeof *v, cmp64);
    int64_t last = n - 1;
    int ps[3] = {50, 90, 99};
    fprintf(f, ", \"%s\": {", key);
    for (int i = 0; i < 3; i++) {
        int64_t k = n * ps[i] / 100;
        fprintf(f, "\"p%d\": %.3f, ", ps[i], v[k < last ? k : last] / 1e6);
    }
    fprintf(f, "\"max\": %.3f, \"count\": %lld}", v[last] / 1e6, (long long)n);
}

/* -- modes ------------------------------------------------------------------------------------- */

static void run_saturate(FILE *f) {
    Totals a, b;
    sending = 1;
    for (int i = 0; i < nsenders; i++) send_chats(&conns[senders[i]], inflight_max);
    flush_dirty();
    run_for(warmup);
    mark("start", &a);
    run_for(duration);
    mark("end", &b);
    sending = 0;
    int settled = settle(10.0);
    print_window(f, &a, &b);
    print_checks(f, settled);
}

static void run_rate(FILE *f) {
    Totals a = {0}, b = {0};
    double started = now_s(), stop_at = started + warmup + duration;
    int64_t sent = 0;
    int phase = 0; /* 0 warm-up, 1 window, 2 after */
    double t;
    while ((t = now_s()) < stop_at) {
        if (phase == 0 && t >= started + warmup) {
            recording = 1;
            mark("start", &a);
            phase = 1;
        }
        int64_t due = (int64_t)((t - started) * rate);
        while (sent < due && nsenders) {
            send_chats(&conns[senders[sent % nsenders]], 1);
            sent++;
        }
        flush_dirty();
        handle_events(1);
    }
    mark("end", &b);
    recording = 0;
    int settled = settle(10.0);
    print_window(f, &a, &b);
    print_checks(f, settled);
    print_percentiles(f, "latency_ms", lat, nlat);
}

static void run_probe(FILE *f) {
    Totals a, b;
    Conn *probe = &conns[senders[0]];
    int64_t *rtts = calloc(probes, sizeof *rtts), got = 0;
    mark("start", &a);
    for (int i = 0; i < probes; i++) {
        int64_t t0 = now_ns();
        send_chats(probe, 1);
        flush_dirty();
        double deadline = now_s() + 5;
        while (probe->inflight > 0 && now_s() < deadline && probe->state == S_JOINED) handle_events(1);
        if (probe->inflight > 0) note("probe: no echo within 5 s");
        else rtts[got++] = now_ns() - t0;
        run_for(probe_interval);
    }
    mark("end", &b);
    int settled = settle(10.0);
    print_window(f, &a, &b);
    print_checks(f, settled);
    print_percentiles(f, "probe_ms", rtts, got);
    fprintf(f, ", \"probes_lost\": %lld", (long long)(probes - got));
    free(rtts);
}

/* -- options --------------------------------------------------------------------------------- */

static void add_target(const char *url) {
    if (ntargets == MAX_TARGETS) die("too many --url");
    Target *t = &targets[ntargets++];
    const char *p = strncmp(url, "ws://", 5) ? NULL : url + 5;
    if (!p) die("--url must start with ws://");
    const char *colon = strchr(p, ':'), *slash = strchr(p, '/');
    if (!colon || (slash && slash < colon)) die("--url needs host:port");
    snprintf(t->host, sizeof t->host, "%.*s", (int)(colon - p), p);
    if (!strcmp(t->host, "localhost")) strcpy(t->host, "127.0.0.1");
    t->port = atoi(colon + 1);
    snprintf(t->path, sizeof t->path, "%s", slash ? slash : "/");
    t->sio = !strncmp(t->path, "/socket.io/", 11);
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) die("every option takes a value");
        i++;
        if (!strcmp(k, "--url")) add_target(v);
        else if (!strcmp(k, "--mode")) mode = v;
        else if (!strcmp(k, "--rooms")) rooms = atoi(v);
        else if (!strcmp(k, "--clients-per-room")) clients_per_room = atoi(v);
        else if (!strcmp(k, "--senders-per-room")) senders_per_room = atoi(v);
        else if (!strcmp(k, "--inflight")) inflight_max = atoi(v);
        else if (!strcmp(k, "--rate")) rate = atof(v);
        else if (!strcmp(k, "--text-len")) text_len = atoi(v);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--duration")) duration = atof(v);
        else if (!strcmp(k, "--concurrency")) concurrency = atoi(v);
        else if (!strcmp(k, "--connect-timeout")) connect_timeout = atof(v);
        else if (!strcmp(k, "--probes")) probes = atoi(v);
        else if (!strcmp(k, "--probe-interval")) probe_interval = atof(v);
        else if (!strcmp(k, "--linger-us")) linger_us = atoi(v);
        else if (!strcmp(k, "--loop")) continue; /* loadgen.py's option: there is one loop here */
        else {
            fprintf(stderr, "loadgen: unknown option %s\n", k);
            exit(2);
        }
    }
    if (!ntargets) die("--url is required");
    if (strcmp(mode, "saturate") && strcmp(mode, "rate") && strcmp(mode, "idle") && strcmp(mode, "probe"))
        die("--mode: saturate, rate, idle or probe");
    if (rooms < 1 || clients_per_room < 1 || senders_per_room > clients_per_room || concurrency < 1)
        die("rooms, clients and concurrency must be >= 1, senders <= clients");
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    padlen = text_len - STAMP_DIGITS - 3 > 0 ? text_len - STAMP_DIGITS - 3 : 0;
    pad = malloc(padlen + 1);
    memset(pad, 'x', padlen);
    nconns = rooms * clients_per_room;
    conns = calloc(nconns, sizeof *conns);
    senders = calloc(nconns, sizeof *senders);
    dirty_list = calloc(nconns, sizeof *dirty_list);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    for (int r = 0, i = 0; r < rooms; r++)
        for (int k = 0; k < clients_per_room; k++, i++) {
            Conn *c = &conns[i];
            c->target = i % ntargets;
            c->room = r;
            c->room_json_len = snprintf(c->room_json, sizeof c->room_json, "\"r%d\"", r);
            c->next_seq = -1;
            c->fd = -1;
            random_bytes(c->mask, 4);
            if (k < senders_per_room) {
                c->sender = 1;
                senders[nsenders++] = i;
            }
        }
    double t0 = now_s();
    open_all();
    double connect_s = now_s() - t0;
    int h = held();
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    printf("{\"event\": \"mark\", \"name\": \"connected\", ");
    print_opened(stdout, nconns, h, connect_s);
    printf("}\n");
    fflush(stdout);
    while (!go_received) handle_events(50); /* the driver samples the server, then says go */
    static char body[1 << 16];
    FILE *f = fmemopen(body, sizeof body, "w");
    if (h && (nsenders || !strcmp(mode, "idle"))) {
        if (!strcmp(mode, "saturate")) run_saturate(f);
        else if (!strcmp(mode, "rate")) run_rate(f);
        else if (!strcmp(mode, "probe")) run_probe(f);
    }
    fclose(f);
    printf("{\"event\": \"result\", \"mode\": \"%s\", \"loop\": \"c-epoll\", ", mode);
    print_opened(stdout, nconns, held(), connect_s);
    printf("%s, \"closed_by_server\": %d, \"notes\": {", body, closed_by_server);
    for (int i = 0; i < nnotes; i++) {
        printf("%s", i ? ", " : "");
        json_string(stdout, notes[i].text, strlen(notes[i].text));
        printf(": %d", notes[i].count);
    }
    printf("}}\n");
    fflush(stdout);
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != S_CLOSED) close(conns[i].fd);
    return 0;
}
