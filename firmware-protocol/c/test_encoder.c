/*
 * test_encoder.c - rebuilds the valid uplink vectors with the C encoder.
 *
 * Prints one line per message, "name<TAB>payload", for the Python test to
 * compare with firmware-protocol/vectors/valid/<name>.json and to validate
 * against the schemas; names under "extra/" have no vector and are only
 * validated. Checks the encoder's error paths itself and exits non-zero,
 * naming the failure on stderr, if one misbehaves.
 */
#include "aquafleet_proto.h"

#include <stdio.h>
#include <string.h>

#define T0 UINT64_C(1764300000000)
#define BUF 4096

static int failures = 0;
static char out[BUF];

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "FAIL: %s\n", what);
        failures++;
    }
}

typedef afp_result (*encode_fn)(char *buf, size_t cap, const void *msg);

static afp_result enc_birth(char *b, size_t c, const void *m) { return afp_encode_birth(b, c, (const afp_birth *)m); }
static afp_result enc_tele(char *b, size_t c, const void *m) { return afp_encode_telemetry(b, c, (const afp_telemetry *)m); }
static afp_result enc_event(char *b, size_t c, const void *m) { return afp_encode_event(b, c, (const afp_event *)m); }
static afp_result enc_status(char *b, size_t c, const void *m) { return afp_encode_status(b, c, (const afp_status *)m); }
static afp_result enc_ack(char *b, size_t c, const void *m) { return afp_encode_ack(b, c, (const afp_ack *)m); }

/* Encode, print, and check that every smaller buffer is refused cleanly. */
static void emit(const char *name, encode_fn fn, const void *msg)
{
    static char small[BUF + 1];
    afp_result n = fn(out, sizeof out, msg);
    size_t cap;

    if (n < 0) {
        fprintf(stderr, "FAIL: %s: error %ld\n", name, (long)n);
        failures++;
        return;
    }
    check(out[n] == '\0' && strlen(out) == (size_t)n, "NUL-terminated, length returned");
    for (cap = 1; cap <= (size_t)n; cap++) {
        memset(small, 0x5A, sizeof small);
        if (fn(small, cap, msg) != AFP_ERR_BUFFER || small[cap] != 0x5A) {
            fprintf(stderr, "FAIL: %s: cap %lu not refused cleanly\n", name, (unsigned long)cap);
            failures++;
            break;
        }
    }
    check(fn(small, (size_t)n + 1, msg) == n, "exact buffer (length + NUL) is enough");
    printf("%s\t%s\n", name, out);
}

static afp_header hdr(const char *id, uint32_t boot, uint32_t seq, uint64_t ts)
{
    afp_header h;
    h.device_id = id;
    h.boot = boot;
    h.seq = seq;
    h.ts_ms = ts;
    h.hist = false;
    return h;
}

static afp_metrics purifier_metrics(void)
{
    afp_metrics m;
    memset(&m, 0, sizeof m);
    AFP_SET(m, tds_in, AFP_M_TDS_IN, 312.5);
    AFP_SET(m, tds_out, AFP_M_TDS_OUT, 11.2);
    AFP_SET(m, feed_temp, AFP_M_FEED_TEMP, 18.4);
    AFP_SET(m, inlet_pressure, AFP_M_INLET_PRESSURE, 310.0);
    AFP_SET(m, prefilter_dp, AFP_M_PREFILTER_DP, 22.5);
    AFP_SET(m, permeate_flow, AFP_M_PERMEATE_FLOW, 0.31);
    AFP_SET(m, dispense_flow, AFP_M_DISPENSE_FLOW, 0.0);
    AFP_SET(m, volume_total, AFP_M_VOLUME_TOTAL, 18234.6);
    AFP_SET(m, tank_level, AFP_M_TANK_LEVEL, 82.0);
    AFP_SET(m, pump_current, AFP_M_PUMP_CURRENT, 1.12);
    AFP_SET(m, hot_temp, AFP_M_HOT_TEMP, 91.5);
    AFP_SET(m, cold_temp, AFP_M_COLD_TEMP, 6.1);
    AFP_SET(m, uv_intensity, AFP_M_UV_INTENSITY, 94.0);
    AFP_SET(m, uv_hours, AFP_M_UV_HOURS, 2311.2);
    AFP_SET(m, leak, AFP_M_LEAK, false);
    AFP_SET(m, door_open, AFP_M_DOOR_OPEN, false);
    AFP_SET(m, mains_ok, AFP_M_MAINS_OK, true);
    AFP_SET(m, heater_on, AFP_M_HEATER_ON, false);
    AFP_SET(m, compressor_on, AFP_M_COMPRESSOR_ON, true);
    AFP_SET(m, pump_on, AFP_M_PUMP_ON, true);
    AFP_SET(m, uv_on, AFP_M_UV_ON, true);
    AFP_SET(m, rssi, AFP_M_RSSI, -71);
    AFP_SET(m, uptime, AFP_M_UPTIME, 86400);
    return m;
}

static afp_metrics vending_metrics(void)
{
    afp_metrics m;
    memset(&m, 0, sizeof m);
    AFP_SET(m, tds_in, AFP_M_TDS_IN, 540.0);
    AFP_SET(m, tds_out, AFP_M_TDS_OUT, 18.0);
    AFP_SET(m, feed_temp, AFP_M_FEED_TEMP, 24.5);
    AFP_SET(m, inlet_pressure, AFP_M_INLET_PRESSURE, 280.0);
    AFP_SET(m, prefilter_dp, AFP_M_PREFILTER_DP, 31.0);
    AFP_SET(m, permeate_flow, AFP_M_PERMEATE_FLOW, 0.42);
    AFP_SET(m, dispense_flow, AFP_M_DISPENSE_FLOW, 2.1);
    AFP_SET(m, volume_total, AFP_M_VOLUME_TOTAL, 402331.25);
    AFP_SET(m, tank_level, AFP_M_TANK_LEVEL, 64.5);
    AFP_SET(m, pump_current, AFP_M_PUMP_CURRENT, 1.4);
    AFP_SET(m, uv_intensity, AFP_M_UV_INTENSITY, 88.0);
    AFP_SET(m, uv_hours, AFP_M_UV_HOURS, 5120.0);
    AFP_SET(m, leak, AFP_M_LEAK, false);
    AFP_SET(m, door_open, AFP_M_DOOR_OPEN, false);
    AFP_SET(m, mains_ok, AFP_M_MAINS_OK, true);
    AFP_SET(m, pump_on, AFP_M_PUMP_ON, true);
    AFP_SET(m, uv_on, AFP_M_UV_ON, true);
    AFP_SET(m, payment_ok, AFP_M_PAYMENT_OK, false);
    AFP_SET(m, payment_error, AFP_M_PAYMENT_ERROR, 3);
    AFP_SET(m, sales_count, AFP_M_SALES_COUNT, 48211);
    AFP_SET(m, sales_amount, AFP_M_SALES_AMOUNT, 2410550);
    AFP_SET(m, rssi, AFP_M_RSSI, -93);
    AFP_SET(m, uptime, AFP_M_UPTIME, 7200);
    return m;
}

static void births(void)
{
    static const afp_stage pur_stages[] = {
        {1, AFP_CART_PP, 3000, 180, 1200.5, 40.2, UINT64_C(1760826000000), NULL},
        {2, AFP_CART_CARBON, 6000, 365, 1200.5, 40.2, UINT64_C(1760826000000), NULL},
        {3, AFP_CART_RO, 15000, 730, 5210.0, 201.0, UINT64_C(1746934800000), "RO-75G-22817"},
        {4, AFP_CART_POST, 8000, 365, 5210.0, 201.0, UINT64_C(1746934800000), NULL},
    };
    static const afp_stage vend_stages[] = {
        {1, AFP_CART_PP, 3000, 90, 2750.0, 61.0, 0, NULL},
        {2, AFP_CART_CARBON, 6000, 180, 2750.0, 61.0, 0, NULL},
        {3, AFP_CART_RO, 15000, 730, 11900.0, 300.5, 0, NULL},
        {4, AFP_CART_MINERAL, 8000, 365, 2750.0, 61.0, 0, NULL},
    };
    static const afp_fault_code vend_faults[] = {AFP_FAULT_PAYMENT_FAULT, AFP_FAULT_CARTRIDGE_EXHAUSTED};
    afp_birth b;

    memset(&b, 0, sizeof b);
    b.h = hdr("pur-0001", 7, 0, T0);
    b.conn = 1;
    b.fw = "2.4.1";
    b.hw = "B3";
    b.model = "AQ-RO-400HC";
    b.serial = "AQ400-000117";
    b.machine_class = AFP_CLASS_CAMPUS;
    b.config.version = 3;
    b.config.present = AFP_BIT(AFP_CFG_TELEMETRY_INTERVAL_S) | AFP_BIT(AFP_CFG_HOT_SETPOINT) |
                       AFP_BIT(AFP_CFG_COLD_SETPOINT) | AFP_BIT(AFP_CFG_UV_LAMP_LIFE_H) |
                       AFP_BIT(AFP_CFG_DOOR_ALARM_S);
    b.config.telemetry_interval_s = 60;
    b.config.hot_setpoint = 92.0;
    b.config.cold_setpoint = 6.0;
    b.config.uv_lamp_life_h = 9000;
    b.config.door_alarm_s = 60;
    b.stages = pur_stages;
    b.n_stages = 4;
    b.metrics = purifier_metrics();
    emit("birth_purifier", enc_birth, &b);

    memset(&b, 0, sizeof b);
    b.h = hdr("vend-0042", 112, 5310, T0);
    b.conn = 4;
    b.fw = "1.9.0";
    b.model = "WV-1000";
    b.machine_class = AFP_CLASS_VENDING;
    b.config.version = 12;
    b.config.present = AFP_BIT(AFP_CFG_TELEMETRY_INTERVAL_S) | AFP_BIT(AFP_CFG_UV_LAMP_LIFE_H) |
                       AFP_BIT(AFP_CFG_DOOR_ALARM_S) | AFP_BIT(AFP_CFG_PRICE_PER_LITRE) |
                       AFP_BIT(AFP_CFG_CURRENCY);
    b.config.telemetry_interval_s = 300;
    b.config.uv_lamp_life_h = 9000;
    b.config.door_alarm_s = 60;
    b.config.price_per_litre = 50;
    strcpy(b.config.currency, "EUR");
    b.stages = vend_stages;
    b.n_stages = 4;
    b.metrics = vending_metrics();
    b.faults = vend_faults;
    b.n_faults = 2;
    emit("birth_vending", enc_birth, &b);
}

static void telemetry(void)
{
    static const afp_stage_usage pur[] = {
        {1, 1200.5, 40.2}, {2, 1200.5, 40.2}, {3, 5210.0, 201.0}, {4, 5210.0, 201.0}};
    static const afp_stage_usage vend[] = {{1, 2750.0, 61.0}, {3, 11900.0, 300.5}};
    afp_telemetry t;

    memset(&t, 0, sizeof t);
    t.h = hdr("pur-0001", 7, 1, T0);
    t.metrics = purifier_metrics();
    t.stages = pur;
    t.n_stages = 4;
    emit("telemetry_purifier", enc_tele, &t);

    memset(&t, 0, sizeof t);
    t.h = hdr("vend-0042", 112, 5311, T0);
    t.metrics = vending_metrics();
    t.stages = vend;
    t.n_stages = 2;
    emit("telemetry_vending", enc_tele, &t);

    memset(&t, 0, sizeof t);
    t.h = hdr("pur-0001", 7, 2, T0);
    emit("telemetry_minimal", enc_tele, &t);

    memset(&t, 0, sizeof t);
    t.h = hdr("pur-0001", 6, 90211, UINT64_C(1764127200000));
    t.h.hist = true;
    AFP_SET(t.metrics, tank_level, AFP_M_TANK_LEVEL, 40.0);
    AFP_SET(t.metrics, mains_ok, AFP_M_MAINS_OK, false);
    AFP_SET(t.metrics, uptime, AFP_M_UPTIME, 431000);
    emit("telemetry_hist", enc_tele, &t);

    memset(&t, 0, sizeof t);
    t.h = hdr("pur-0001", 7, 4, UINT64_C(1764300300000));
    AFP_SET(t.metrics, tank_level, AFP_M_TANK_LEVEL, 81.0);
    emit("telemetry_device_clock_ahead", enc_tele, &t);
}

static afp_event event(const char *id, uint32_t boot, uint32_t seq, afp_event_kind kind)
{
    afp_event e;
    memset(&e, 0, sizeof e);
    e.h = hdr(id, boot, seq, T0);
    e.kind = kind;
    return e;
}

static void events(void)
{
    afp_event e;
    int code;
    char name[64];

    e = event("pur-0001", 7, 5, AFP_EV_FAULT_RAISED);
    e.fault.code = AFP_FAULT_UV_LAMP_FAILURE;
    e.fault.has_value = true;
    e.fault.value = 41.5;
    e.detail = "lamp on, intensity 41.5 % for 10 s; dispensing locked";
    emit("event_fault_raised", enc_event, &e);

    e = event("pur-0001", 7, 6, AFP_EV_FAULT_CLEARED);
    e.fault.code = AFP_FAULT_UV_LAMP_FAILURE;
    e.fault.has_value = true;
    e.fault.value = 93.0;
    emit("event_fault_cleared", enc_event, &e);

    e = event("vend-0042", 112, 5312, AFP_EV_DOOR_OPENED);
    e.door.has_maintenance = true;
    e.door.maintenance = true;
    emit("event_door_opened", enc_event, &e);

    e = event("vend-0042", 112, 5313, AFP_EV_DOOR_CLOSED);
    emit("event_door_closed", enc_event, &e);

    e = event("vend-0042", 112, 5314, AFP_EV_PAYMENT);
    e.payment.method = AFP_PAY_CARD;
    e.payment.amount = 250;
    strcpy(e.payment.currency, "EUR");
    e.payment.has_volume = true;
    e.payment.volume_l = 5.0;
    e.payment.result = AFP_PAY_OK;
    emit("event_payment", enc_event, &e);

    e = event("vend-0042", 112, 5315, AFP_EV_PAYMENT);
    e.payment.method = AFP_PAY_COIN;
    e.payment.amount = 0;
    strcpy(e.payment.currency, "EUR");
    e.payment.result = AFP_PAY_ERROR;
    e.payment.has_error_code = true;
    e.payment.error_code = 3;
    e.detail = "coin jam";
    emit("event_payment_error", enc_event, &e);

    e = event("pur-0001", 7, 1, AFP_EV_REBOOT);
    e.reboot.reason = AFP_RESET_BROWNOUT;
    e.reboot.has_prev_uptime = true;
    e.reboot.prev_uptime = 431013;
    emit("event_reboot", enc_event, &e);

    e = event("pur-0001", 7, 7, AFP_EV_CARTRIDGE_REPLACED);
    e.cartridge.slot = 1;
    e.cartridge.kind = AFP_CART_PP;
    e.cartridge.capacity_l = 3000;
    e.cartridge.capacity_days = 180;
    e.cartridge.serial = "PP-5M-90412";
    e.cartridge.source = AFP_SOURCE_PANEL;
    emit("event_cartridge_replaced", enc_event, &e);

    /* Every fault code, so the C table is checked against the schema's enum. */
    for (code = 0; code < AFP_FAULT_COUNT; code++) {
        e = event("pur-0001", 7, (uint32_t)(100 + code), AFP_EV_FAULT_RAISED);
        e.fault.code = (afp_fault_code)code;
        sprintf(name, "extra/fault_%s", afp_fault_name((afp_fault_code)code));
        emit(name, enc_event, &e);
    }

    /* Escaping: quote, backslash, newline, tab, a control byte, and UTF-8. */
    e = event("pur-0001", 7, 200, AFP_EV_DOOR_OPENED);
    e.detail = "say \"hi\" \\ path\n\ttab \x01 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\xa7";
    emit("extra/escaping", enc_event, &e);

    /* Negative numbers, rounding up into the integer part, small fractions. */
    e = event("pur-0001", 7, 201, AFP_EV_FAULT_RAISED);
    e.fault.code = AFP_FAULT_SENSOR_FAULT;
    e.fault.has_value = true;
    e.fault.value = -12.9999999;
    emit("extra/number_rounding", enc_event, &e);
}

static void statuses(void)
{
    static const char *const served[] = {"pur-0101", "pur-0102", "pur-0103"};
    afp_status s;

    memset(&s, 0, sizeof s);
    s.device_id = "pur-0001";
    s.boot = 7;
    s.conn = 1;
    s.ts_ms = T0;
    s.state = AFP_STATE_ONLINE;
    emit("status_online", enc_status, &s);
    s.state = AFP_STATE_OFFLINE;
    emit("status_offline", enc_status, &s);
    s.conn = 2;
    s.ts_ms = UINT64_C(1764040800000);
    s.state = AFP_STATE_LOST;
    emit("status_lost_will", enc_status, &s);

    memset(&s, 0, sizeof s);
    s.device_id = "gw-campus-01";
    s.boot = 3;
    s.conn = 9;
    s.ts_ms = T0;
    s.state = AFP_STATE_ONLINE;
    s.serves = served;
    s.n_serves = 3;
    emit("status_gateway", enc_status, &s);
}

static void acks(void)
{
    afp_ack a;

    memset(&a, 0, sizeof a);
    a.h = hdr("pur-0001", 7, 8, T0);
    a.cmd_id = "c-20251128-0007";
    a.status = AFP_ACK_IN_PROGRESS;
    emit("ack_in_progress", enc_ack, &a);

    a.h.seq = 20;
    a.status = AFP_ACK_SUCCEEDED;
    a.detail = "11 messages resent";
    emit("ack_succeeded", enc_ack, &a);

    memset(&a, 0, sizeof a);
    a.h = hdr("pur-0001", 7, 21, T0);
    a.cmd_id = "c-20251128-0008";
    a.status = AFP_ACK_REJECTED;
    a.error = AFP_ACK_ERR_UNKNOWN_COMMAND;
    emit("ack_rejected", enc_ack, &a);

    memset(&a, 0, sizeof a);
    a.h = hdr("pur-0001", 7, 22, T0);
    a.cmd_id = "c-20251128-0009";
    a.status = AFP_ACK_EXPIRED;
    emit("ack_expired", enc_ack, &a);
}

static void refusals(void)
{
    volatile double zero = 0.0;
    afp_telemetry t;
    afp_event e;
    afp_ack a;
    char topic[AFP_MAX_TOPIC];

    memset(&t, 0, sizeof t);
    t.h = hdr("pur-0001", 7, 1, T0);
    AFP_SET(t.metrics, tds_in, AFP_M_TDS_IN, zero / zero);
    check(afp_encode_telemetry(out, sizeof out, &t) == AFP_ERR_NONFINITE, "NaN refused");
    AFP_SET(t.metrics, tds_in, AFP_M_TDS_IN, 1.0 / zero);
    check(afp_encode_telemetry(out, sizeof out, &t) == AFP_ERR_NONFINITE, "+inf refused");
    AFP_SET(t.metrics, tds_in, AFP_M_TDS_IN, -1.0 / zero);
    check(afp_encode_telemetry(out, sizeof out, &t) == AFP_ERR_NONFINITE, "-inf refused");
    AFP_SET(t.metrics, tds_in, AFP_M_TDS_IN, 1e300);
    check(afp_encode_telemetry(out, sizeof out, &t) == AFP_ERR_RANGE, "huge number refused");

    t.metrics.present = 0;
    t.h.device_id = "p1";
    check(afp_encode_telemetry(out, sizeof out, &t) == AFP_ERR_ARG, "short device id refused");
    t.h.device_id = "pur/0001";
    check(afp_encode_telemetry(out, sizeof out, &t) == AFP_ERR_ARG, "slash in device id refused");
    t.h.device_id = "pur-0001";
    check(afp_encode_telemetry(NULL, 10, &t) == AFP_ERR_ARG, "NULL buffer refused");
    check(afp_encode_telemetry(out, 0, &t) == AFP_ERR_ARG, "zero capacity refused");

    e = event("pur-0001", 7, 5, AFP_EV_DOOR_OPENED);
    e.detail = "bad \xc3\x28 byte";
    check(afp_encode_event(out, sizeof out, &e) == AFP_ERR_UTF8, "invalid UTF-8 refused");
    e.detail = "overlong \xc0\xaf";
    check(afp_encode_event(out, sizeof out, &e) == AFP_ERR_UTF8, "overlong UTF-8 refused");
    e.detail = "surrogate \xed\xa0\x80";
    check(afp_encode_event(out, sizeof out, &e) == AFP_ERR_UTF8, "encoded surrogate refused");
    e.detail = "truncated \xe2\x82";
    check(afp_encode_event(out, sizeof out, &e) == AFP_ERR_UTF8, "truncated UTF-8 refused");
    e.detail = NULL;
    e.kind = (afp_event_kind)42;
    check(afp_encode_event(out, sizeof out, &e) == AFP_ERR_ARG, "unknown event kind refused");

    memset(&a, 0, sizeof a);
    a.h = hdr("pur-0001", 7, 9, T0);
    a.cmd_id = "c-1";
    a.status = AFP_ACK_FAILED;
    check(afp_encode_ack(out, sizeof out, &a) == AFP_ERR_ARG, "failed ack without error refused");

    check(afp_topic(topic, sizeof topic, "pur-0001", AFP_KIND_TELEMETRY) == 31 &&
              strcmp(topic, "aquafleet/v1/pur-0001/telemetry") == 0,
          "topic");
    check(afp_topic(topic, 10, "pur-0001", AFP_KIND_TELEMETRY) == AFP_ERR_BUFFER, "topic buffer");
    check(afp_device_id_valid("a-_") && !afp_device_id_valid("-ab") && !afp_device_id_valid("ab"),
          "device id pattern");
}

int main(void)
{
    births();
    telemetry();
    events();
    statuses();
    acks();
    refusals();
    if (failures != 0) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    return 0;
}
