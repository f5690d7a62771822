/*
 * aquafleet_proto.c - AquaFleet device protocol v1, device-side encoder.
 * See aquafleet_proto.h for the API and SPEC.md for the protocol.
 */
#include "aquafleet_proto.h"

#include <string.h>

/* ---- writer ----------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t cap;
    size_t len;
    afp_result err;
} afp_w;

static void w_fail(afp_w *w, afp_result err)
{
    if (w->err == 0) {
        w->err = err;
    }
}

static void w_raw(afp_w *w, const char *s, size_t n)
{
    if (w->err != 0) {
        return;
    }
    /* Keep one byte for the terminating NUL. */
    if (n >= w->cap - w->len) {
        w_fail(w, AFP_ERR_BUFFER);
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void w_str(afp_w *w, const char *s) { w_raw(w, s, strlen(s)); }

static void w_char(afp_w *w, char c) { w_raw(w, &c, 1); }

static void w_u64(afp_w *w, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[sizeof tmp - 1 - n] = (char)('0' + (int)(v % 10u));
        v /= 10u;
        n++;
    } while (v != 0u);
    w_raw(w, tmp + sizeof tmp - n, n);
}

static void w_i64(afp_w *w, int64_t v)
{
    if (v < 0) {
        w_char(w, '-');
        /* -(v + 1) + 1 avoids overflow at INT64_MIN. */
        w_u64(w, (uint64_t)(-(v + 1)) + 1u);
    } else {
        w_u64(w, (uint64_t)v);
    }
}

/*
 * Decimal with at most 6 fraction digits, trailing zeros dropped. Written by
 * hand because printf's %f/%g follow the C locale's decimal point and are
 * often missing or huge on small targets.
 */
static void w_double(afp_w *w, double x)
{
    uint64_t ip;
    uint64_t frac;
    char digits[6];
    int n;

    /* NaN and infinities: x - x is NaN for both, and NaN != NaN. */
    if ((x - x) != (x - x)) {
        w_fail(w, AFP_ERR_NONFINITE);
        return;
    }
    if (x < 0) {
        w_char(w, '-');
        x = -x;
    }
    if (x >= 1e15) {
        w_fail(w, AFP_ERR_RANGE);
        return;
    }
    ip = (uint64_t)x;
    frac = (uint64_t)((x - (double)ip) * 1e6 + 0.5);
    if (frac >= 1000000u) {
        ip += 1u;
        frac -= 1000000u;
    }
    w_u64(w, ip);
    if (frac == 0u) {
        return;
    }
    for (n = 5; n >= 0; n--) {
        digits[n] = (char)('0' + (int)(frac % 10u));
        frac /= 10u;
    }
    n = 6;
    while (n > 0 && digits[n - 1] == '0') {
        n--;
    }
    w_char(w, '.');
    w_raw(w, digits, (size_t)n);
}

/* Length of the UTF-8 sequence starting at s, or 0 when it is invalid. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned char c = s[0];
    if (c < 0x80u) {
        return 1;
    }
    if (c >= 0xC2u && c <= 0xDFu) {
        return (s[1] & 0xC0u) == 0x80u ? 2 : 0;
    }
    if (c >= 0xE0u && c <= 0xEFu) {
        /* Reject overlong forms (E0 80..9F) and surrogates (ED A0..BF). */
        if ((s[1] & 0xC0u) != 0x80u || (s[2] & 0xC0u) != 0x80u) {
            return 0;
        }
        if ((c == 0xE0u && s[1] < 0xA0u) || (c == 0xEDu && s[1] > 0x9Fu)) {
            return 0;
        }
        return 3;
    }
    if (c >= 0xF0u && c <= 0xF4u) {
        if ((s[1] & 0xC0u) != 0x80u || (s[2] & 0xC0u) != 0x80u || (s[3] & 0xC0u) != 0x80u) {
            return 0;
        }
        if ((c == 0xF0u && s[1] < 0x90u) || (c == 0xF4u && s[1] > 0x8Fu)) {
            return 0;
        }
        return 4;
    }
    return 0;
}

/* A JSON string: quotes, escapes for '"', '\\' and control characters. */
static void w_jstr(afp_w *w, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t run;

    if (s == NULL) {
        w_fail(w, AFP_ERR_ARG);
        return;
    }
    w_char(w, '"');
    while (*p != 0u && w->err == 0) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            char esc[2];
            esc[0] = '\\';
            esc[1] = (char)c;
            w_raw(w, esc, 2);
            p++;
        } else if (c < 0x20u) {
            char esc[6];
            esc[0] = '\\';
            switch (c) {
            case '\n': esc[1] = 'n'; w_raw(w, esc, 2); break;
            case '\r': esc[1] = 'r'; w_raw(w, esc, 2); break;
            case '\t': esc[1] = 't'; w_raw(w, esc, 2); break;
            case '\b': esc[1] = 'b'; w_raw(w, esc, 2); break;
            case '\f': esc[1] = 'f'; w_raw(w, esc, 2); break;
            default:
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 0x0Fu];
                w_raw(w, esc, 6);
                break;
            }
            p++;
        } else {
            run = utf8_len(p);
            if (run == 0) {
                w_fail(w, AFP_ERR_UTF8);
                return;
            }
            w_raw(w, (const char *)p, run);
            p += run;
        }
    }
    w_char(w, '"');
}

/* Members: the first one opens with '{' already written, later ones get ','. */
static void w_key(afp_w *w, const char *key)
{
    if (w->len > 0 && w->buf[w->len - 1] != '{' && w->buf[w->len - 1] != '[') {
        w_char(w, ',');
    }
    w_char(w, '"');
    w_str(w, key);
    w_raw(w, "\":", 2);
}

static void kv_u64(afp_w *w, const char *k, uint64_t v) { w_key(w, k); w_u64(w, v); }
static void kv_i64(afp_w *w, const char *k, int64_t v) { w_key(w, k); w_i64(w, v); }
static void kv_dbl(afp_w *w, const char *k, double v) { w_key(w, k); w_double(w, v); }
static void kv_str(afp_w *w, const char *k, const char *v) { w_key(w, k); w_jstr(w, v); }
static void kv_bool(afp_w *w, const char *k, bool v) { w_key(w, k); w_str(w, v ? "true" : "false"); }

static void kv_opt_str(afp_w *w, const char *k, const char *v)
{
    if (v != NULL) {
        kv_str(w, k, v);
    }
}

static void kv_enum(afp_w *w, const char *k, const char *const *names, size_t n, int v)
{
    if (v < 0 || (size_t)v >= n) {
        w_fail(w, AFP_ERR_ARG);
        return;
    }
    w_key(w, k);
    w_char(w, '"');
    w_str(w, names[v]);
    w_char(w, '"');
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define KV_ENUM(w, k, names, v) kv_enum((w), (k), (names), COUNT(names), (int)(v))

/* ---- names ------------------------------------------------------------ */

static const char *const kind_names[] = {"birth", "telemetry", "event", "status", "ack", "cmd"};
static const char *const fault_names[] = {
    "prefilter_clogged", "membrane_degraded", "membrane_failed",
    "cartridge_exhausted", "cartridge_overdue", "uv_lamp_failure",
    "uv_lamp_expired", "leak", "pump_failure", "no_inlet_water",
    "valve_stuck_open", "tank_empty", "heater_failure", "hot_overtemp",
    "compressor_failure", "payment_fault", "door_open", "power_loss",
    "sensor_fault", "clock_drift", "offline", "flapping", "telemetry_gap"};
static const char *const cart_names[] = {"pp", "carbon", "ro", "post", "mineral"};
static const char *const class_names[] = {"campus", "vending"};
static const char *const event_names[] = {
    "fault_raised", "fault_cleared", "door_opened", "door_closed", "payment",
    "reboot", "cartridge_replaced"};
static const char *const method_names[] = {"coin", "note", "card", "qr", "token", "free"};
static const char *const result_names[] = {"ok", "declined", "error"};
static const char *const reason_names[] = {
    "power_on", "brownout", "watchdog", "panic", "software", "ota_update",
    "command", "unknown"};
static const char *const source_names[] = {"", "panel", "command"};
static const char *const state_names[] = {"online", "offline", "lost"};
static const char *const ack_names[] = {"in_progress", "succeeded", "failed", "rejected", "expired"};
static const char *const ack_error_names[] = {
    "", "unknown_command", "bad_args", "unsupported", "busy", "not_available", "internal"};

/* Keep the tables and the enums in step at compile time. */
typedef char afp_check_faults[(COUNT(fault_names) == AFP_FAULT_COUNT) ? 1 : -1];

const char *afp_fault_name(afp_fault_code code)
{
    if ((int)code < 0 || (size_t)code >= COUNT(fault_names)) {
        return NULL;
    }
    return fault_names[code];
}

bool afp_device_id_valid(const char *id)
{
    size_t n;
    if (id == NULL) {
        return false;
    }
    for (n = 0; id[n] != '\0'; n++) {
        char c = id[n];
        bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (n == 0 || (c != '_' && c != '-'))) {
            return false;
        }
        if (n >= 64) {
            return false;
        }
    }
    return n >= 3;
}

afp_result afp_topic(char *buf, size_t cap, const char *device_id, afp_kind kind)
{
    afp_w w;
    if (buf == NULL || cap == 0 || !afp_device_id_valid(device_id) || (int)kind < 0 ||
        (size_t)kind >= COUNT(kind_names)) {
        return AFP_ERR_ARG;
    }
    w.buf = buf;
    w.cap = cap;
    w.len = 0;
    w.err = 0;
    w_str(&w, "aquafleet/v1/");
    w_str(&w, device_id);
    w_char(&w, '/');
    w_str(&w, kind_names[kind]);
    if (w.err != 0) {
        return w.err;
    }
    buf[w.len] = '\0';
    return (afp_result)w.len;
}

/* ---- message parts ---------------------------------------------------- */

static afp_result begin(afp_w *w, char *buf, size_t cap, const char *device_id)
{
    if (buf == NULL || cap == 0) {
        return AFP_ERR_ARG;
    }
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->err = 0;
    if (!afp_device_id_valid(device_id)) {
        return AFP_ERR_ARG;
    }
    w_char(w, '{');
    kv_u64(w, "v", AFP_PROTOCOL_VERSION);
    kv_str(w, "device_id", device_id);
    return 0;
}

static afp_result finish(afp_w *w, size_t limit)
{
    w_char(w, '}');
    if (w->err != 0) {
        return w->err;
    }
    if (w->len > limit) {
        return AFP_ERR_TOO_LARGE;
    }
    w->buf[w->len] = '\0';
    return (afp_result)w->len;
}

/* boot, seq, ts and, on replays, hist: the order SPEC.md shows. */
static void w_data_header(afp_w *w, const afp_header *h)
{
    kv_u64(w, "boot", h->boot);
    kv_u64(w, "seq", h->seq);
    kv_u64(w, "ts", h->ts_ms);
    if (h->hist) {
        kv_bool(w, "hist", true);
    }
}

static bool has(uint32_t present, int bit) { return (present & AFP_BIT(bit)) != 0u; }

static void w_metrics(afp_w *w, const afp_metrics *m)
{
    /* Same order as the AFP_M_ bits and SPEC.md's table. */
    static const char *const dnames[] = {
        "tds_in", "tds_out", "feed_temp", "inlet_pressure", "prefilter_dp",
        "permeate_flow", "dispense_flow", "volume_total", "tank_level",
        "pump_current", "hot_temp", "cold_temp", "uv_intensity", "uv_hours"};
    const double dvals[] = {
        m->tds_in, m->tds_out, m->feed_temp, m->inlet_pressure, m->prefilter_dp,
        m->permeate_flow, m->dispense_flow, m->volume_total, m->tank_level,
        m->pump_current, m->hot_temp, m->cold_temp, m->uv_intensity, m->uv_hours};
    static const char *const bnames[] = {
        "leak", "door_open", "mains_ok", "heater_on", "compressor_on", "pump_on",
        "uv_on", "payment_ok"};
    const bool bvals[] = {
        m->leak, m->door_open, m->mains_ok, m->heater_on, m->compressor_on,
        m->pump_on, m->uv_on, m->payment_ok};
    size_t i;

    w_key(w, "metrics");
    w_char(w, '{');
    for (i = 0; i < COUNT(dnames); i++) {
        if (has(m->present, AFP_M_TDS_IN + (int)i)) {
            kv_dbl(w, dnames[i], dvals[i]);
        }
    }
    for (i = 0; i < COUNT(bnames); i++) {
        if (has(m->present, AFP_M_LEAK + (int)i)) {
            kv_bool(w, bnames[i], bvals[i]);
        }
    }
    if (has(m->present, AFP_M_PAYMENT_ERROR)) {
        kv_u64(w, "payment_error", m->payment_error);
    }
    if (has(m->present, AFP_M_SALES_COUNT)) {
        kv_u64(w, "sales_count", m->sales_count);
    }
    if (has(m->present, AFP_M_SALES_AMOUNT)) {
        kv_u64(w, "sales_amount", m->sales_amount);
    }
    if (has(m->present, AFP_M_RSSI)) {
        kv_i64(w, "rssi", m->rssi);
    }
    if (has(m->present, AFP_M_UPTIME)) {
        kv_u64(w, "uptime", m->uptime);
    }
    w_char(w, '}');
}

static void w_config(afp_w *w, const afp_config *c)
{
    w_key(w, "config");
    w_char(w, '{');
    kv_u64(w, "version", c->version);
    if (has(c->present, AFP_CFG_TELEMETRY_INTERVAL_S)) {
        kv_u64(w, "telemetry_interval_s", c->telemetry_interval_s);
    }
    if (has(c->present, AFP_CFG_HOT_SETPOINT)) {
        kv_dbl(w, "hot_setpoint", c->hot_setpoint);
    }
    if (has(c->present, AFP_CFG_COLD_SETPOINT)) {
        kv_dbl(w, "cold_setpoint", c->cold_setpoint);
    }
    if (has(c->present, AFP_CFG_UV_LAMP_LIFE_H)) {
        kv_u64(w, "uv_lamp_life_h", c->uv_lamp_life_h);
    }
    if (has(c->present, AFP_CFG_DOOR_ALARM_S)) {
        kv_u64(w, "door_alarm_s", c->door_alarm_s);
    }
    if (has(c->present, AFP_CFG_PRICE_PER_LITRE)) {
        kv_u64(w, "price_per_litre", c->price_per_litre);
    }
    if (has(c->present, AFP_CFG_CURRENCY)) {
        kv_str(w, "currency", c->currency);
    }
    w_char(w, '}');
}

static bool slot_ok(uint8_t slot) { return slot >= 1u && slot <= 8u; }

/* ---- messages --------------------------------------------------------- */

afp_result afp_encode_telemetry(char *buf, size_t cap, const afp_telemetry *t)
{
    afp_w w;
    afp_result r;
    size_t i;

    if (t == NULL || t->n_stages > 8 || (t->n_stages > 0 && t->stages == NULL)) {
        return AFP_ERR_ARG;
    }
    r = begin(&w, buf, cap, t->h.device_id);
    if (r != 0) {
        return r;
    }
    w_data_header(&w, &t->h);
    w_metrics(&w, &t->metrics);
    if (t->n_stages > 0) {
        w_key(&w, "stages");
        w_char(&w, '[');
        for (i = 0; i < t->n_stages; i++) {
            const afp_stage_usage *s = &t->stages[i];
            if (!slot_ok(s->slot)) {
                return AFP_ERR_ARG;
            }
            if (i > 0) {
                w_char(&w, ',');
            }
            w_char(&w, '{');
            kv_u64(&w, "slot", s->slot);
            kv_dbl(&w, "litres_used", s->litres_used);
            kv_dbl(&w, "days_in_service", s->days_in_service);
            w_char(&w, '}');
        }
        w_char(&w, ']');
    }
    return finish(&w, AFP_MAX_PAYLOAD);
}

afp_result afp_encode_birth(char *buf, size_t cap, const afp_birth *b)
{
    afp_w w;
    afp_result r;
    size_t i;

    if (b == NULL || b->h.hist || b->fw == NULL || b->model == NULL || b->n_stages > 8 ||
        (b->n_stages > 0 && b->stages == NULL) || (b->n_faults > 0 && b->faults == NULL)) {
        return AFP_ERR_ARG;
    }
    r = begin(&w, buf, cap, b->h.device_id);
    if (r != 0) {
        return r;
    }
    kv_u64(&w, "boot", b->h.boot);
    kv_u64(&w, "conn", b->conn);
    kv_u64(&w, "seq", b->h.seq);
    kv_u64(&w, "ts", b->h.ts_ms);
    kv_str(&w, "fw", b->fw);
    kv_opt_str(&w, "hw", b->hw);
    kv_str(&w, "model", b->model);
    kv_opt_str(&w, "serial", b->serial);
    KV_ENUM(&w, "machine_class", class_names, b->machine_class);
    w_config(&w, &b->config);
    w_key(&w, "stages");
    w_char(&w, '[');
    for (i = 0; i < b->n_stages; i++) {
        const afp_stage *s = &b->stages[i];
        if (!slot_ok(s->slot)) {
            return AFP_ERR_ARG;
        }
        if (i > 0) {
            w_char(&w, ',');
        }
        w_char(&w, '{');
        kv_u64(&w, "slot", s->slot);
        KV_ENUM(&w, "kind", cart_names, s->kind);
        kv_dbl(&w, "capacity_l", s->capacity_l);
        kv_u64(&w, "capacity_days", s->capacity_days);
        kv_dbl(&w, "litres_used", s->litres_used);
        kv_dbl(&w, "days_in_service", s->days_in_service);
        if (s->installed_at_ms != 0u) {
            kv_u64(&w, "installed_at", s->installed_at_ms);
        }
        kv_opt_str(&w, "serial", s->serial);
        w_char(&w, '}');
    }
    w_char(&w, ']');
    w_metrics(&w, &b->metrics);
    w_key(&w, "faults");
    w_char(&w, '[');
    for (i = 0; i < b->n_faults; i++) {
        if (i > 0) {
            w_char(&w, ',');
        }
        if ((int)b->faults[i] < 0 || (size_t)b->faults[i] >= COUNT(fault_names)) {
            return AFP_ERR_ARG;
        }
        w_jstr(&w, fault_names[b->faults[i]]);
    }
    w_char(&w, ']');
    return finish(&w, AFP_MAX_BIRTH_PAYLOAD);
}

afp_result afp_encode_event(char *buf, size_t cap, const afp_event *e)
{
    afp_w w;
    afp_result r;

    if (e == NULL) {
        return AFP_ERR_ARG;
    }
    r = begin(&w, buf, cap, e->h.device_id);
    if (r != 0) {
        return r;
    }
    w_data_header(&w, &e->h);
    KV_ENUM(&w, "event", event_names, e->kind);
    switch (e->kind) {
    case AFP_EV_FAULT_RAISED:
    case AFP_EV_FAULT_CLEARED:
        KV_ENUM(&w, "code", fault_names, e->fault.code);
        if (e->fault.has_value) {
            kv_dbl(&w, "value", e->fault.value);
        }
        break;
    case AFP_EV_DOOR_OPENED:
    case AFP_EV_DOOR_CLOSED:
        if (e->door.has_maintenance) {
            kv_bool(&w, "maintenance", e->door.maintenance);
        }
        break;
    case AFP_EV_PAYMENT:
        KV_ENUM(&w, "method", method_names, e->payment.method);
        kv_u64(&w, "amount", e->payment.amount);
        kv_str(&w, "currency", e->payment.currency);
        if (e->payment.has_volume) {
            kv_dbl(&w, "volume_l", e->payment.volume_l);
        }
        KV_ENUM(&w, "result", result_names, e->payment.result);
        if (e->payment.has_error_code) {
            kv_u64(&w, "error_code", e->payment.error_code);
        }
        break;
    case AFP_EV_REBOOT:
        KV_ENUM(&w, "reason", reason_names, e->reboot.reason);
        if (e->reboot.has_prev_uptime) {
            kv_u64(&w, "prev_uptime", e->reboot.prev_uptime);
        }
        break;
    case AFP_EV_CARTRIDGE_REPLACED:
        if (!slot_ok(e->cartridge.slot)) {
            return AFP_ERR_ARG;
        }
        kv_u64(&w, "slot", e->cartridge.slot);
        KV_ENUM(&w, "kind", cart_names, e->cartridge.kind);
        kv_dbl(&w, "capacity_l", e->cartridge.capacity_l);
        kv_u64(&w, "capacity_days", e->cartridge.capacity_days);
        kv_opt_str(&w, "serial", e->cartridge.serial);
        if (e->cartridge.source != AFP_SOURCE_NONE) {
            KV_ENUM(&w, "source", source_names, e->cartridge.source);
        }
        break;
    default:
        return AFP_ERR_ARG;
    }
    kv_opt_str(&w, "detail", e->detail);
    return finish(&w, AFP_MAX_PAYLOAD);
}

afp_result afp_encode_status(char *buf, size_t cap, const afp_status *s)
{
    afp_w w;
    afp_result r;
    size_t i;

    if (s == NULL || (s->n_serves > 0 && s->serves == NULL) || s->n_serves > 256) {
        return AFP_ERR_ARG;
    }
    r = begin(&w, buf, cap, s->device_id);
    if (r != 0) {
        return r;
    }
    kv_u64(&w, "boot", s->boot);
    kv_u64(&w, "conn", s->conn);
    kv_u64(&w, "ts", s->ts_ms);
    KV_ENUM(&w, "state", state_names, s->state);
    if (s->n_serves > 0) {
        w_key(&w, "serves");
        w_char(&w, '[');
        for (i = 0; i < s->n_serves; i++) {
            if (!afp_device_id_valid(s->serves[i])) {
                return AFP_ERR_ARG;
            }
            if (i > 0) {
                w_char(&w, ',');
            }
            w_jstr(&w, s->serves[i]);
        }
        w_char(&w, ']');
    }
    return finish(&w, AFP_MAX_PAYLOAD);
}

afp_result afp_encode_ack(char *buf, size_t cap, const afp_ack *a)
{
    afp_w w;
    afp_result r;
    bool needs_error;

    if (a == NULL || a->cmd_id == NULL) {
        return AFP_ERR_ARG;
    }
    needs_error = a->status == AFP_ACK_FAILED || a->status == AFP_ACK_REJECTED;
    if (needs_error && a->error == AFP_ACK_ERR_NONE) {
        return AFP_ERR_ARG;
    }
    r = begin(&w, buf, cap, a->h.device_id);
    if (r != 0) {
        return r;
    }
    w_data_header(&w, &a->h);
    kv_str(&w, "cmd_id", a->cmd_id);
    KV_ENUM(&w, "status", ack_names, a->status);
    if (a->error != AFP_ACK_ERR_NONE) {
        KV_ENUM(&w, "error", ack_error_names, a->error);
    }
    kv_opt_str(&w, "detail", a->detail);
    return finish(&w, AFP_MAX_PAYLOAD);
}
