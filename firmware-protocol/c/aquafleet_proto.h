/*
 * aquafleet_proto.h - AquaFleet device protocol v1, device-side encoder.
 *
 * Builds the uplink payloads of SPEC.md (birth, telemetry, event, status,
 * ack) and their topics. Vendor this header and aquafleet_proto.c into the
 * firmware; they need only a C99 compiler and the standard headers below
 * (no malloc, no printf, no locale, no libm).
 *
 * Every encoder writes into a caller buffer and returns the payload length
 * (excluding the terminating NUL it always writes on success), or a negative
 * AFP_ERR_* code; on error the buffer content is unspecified and nothing is
 * written at or past buf[cap].
 *
 * Conventions of the structs:
 *   - an optional string is absent when its pointer is NULL;
 *   - an optional number is absent unless its has_ flag (or its bit in a
 *     `present` mask) is set;
 *   - ts_ms is device time, milliseconds since the Unix epoch, UTC;
 *   - numbers are written with at most 6 decimals; NaN and infinities are
 *     refused (AFP_ERR_NONFINITE): JSON cannot carry them. Do not compile
 *     with -ffast-math, which removes the check.
 */
#ifndef AQUAFLEET_PROTO_H
#define AQUAFLEET_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AFP_PROTOCOL_VERSION 1
#define AFP_MAX_PAYLOAD 16384     /* every message but birth */
#define AFP_MAX_BIRTH_PAYLOAD 65536
#define AFP_MAX_TOPIC 96          /* "aquafleet/v1/" + 64-char id + "/telemetry" + NUL fits */

/* Negative results. */
#define AFP_ERR_BUFFER (-1)     /* buffer too small */
#define AFP_ERR_NONFINITE (-2)  /* NaN or infinity in a number */
#define AFP_ERR_RANGE (-3)      /* a number outside what the schema allows to encode */
#define AFP_ERR_UTF8 (-4)       /* a string is not valid UTF-8 */
#define AFP_ERR_ARG (-5)        /* NULL where required, bad device id, bad enum value */
#define AFP_ERR_TOO_LARGE (-6)  /* fits the buffer but exceeds the protocol size limit */

typedef int32_t afp_result;

typedef enum {
    AFP_KIND_BIRTH,
    AFP_KIND_TELEMETRY,
    AFP_KIND_EVENT,
    AFP_KIND_STATUS,
    AFP_KIND_ACK,
    AFP_KIND_CMD
} afp_kind;

/* Writes "aquafleet/v1/{device_id}/{kind}". */
afp_result afp_topic(char *buf, size_t cap, const char *device_id, afp_kind kind);

/* True when device_id matches ^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$. */
bool afp_device_id_valid(const char *device_id);

/* ---- shared values ---------------------------------------------------- */

/* Envelope of data messages (birth, telemetry, event, ack). */
typedef struct {
    const char *device_id;
    uint32_t boot;   /* persisted in flash, +1 at every power-up */
    uint32_t seq;    /* per boot: 0 for the first data message, +1 for each */
    uint64_t ts_ms;
    bool hist;       /* store-and-forward replay (never on a birth) */
} afp_header;

/* Metric bits for afp_metrics.present, in the order of SPEC.md. */
enum {
    AFP_M_TDS_IN, AFP_M_TDS_OUT, AFP_M_FEED_TEMP, AFP_M_INLET_PRESSURE,
    AFP_M_PREFILTER_DP, AFP_M_PERMEATE_FLOW, AFP_M_DISPENSE_FLOW,
    AFP_M_VOLUME_TOTAL, AFP_M_TANK_LEVEL, AFP_M_PUMP_CURRENT, AFP_M_HOT_TEMP,
    AFP_M_COLD_TEMP, AFP_M_UV_INTENSITY, AFP_M_UV_HOURS, AFP_M_LEAK,
    AFP_M_DOOR_OPEN, AFP_M_MAINS_OK, AFP_M_HEATER_ON, AFP_M_COMPRESSOR_ON,
    AFP_M_PUMP_ON, AFP_M_UV_ON, AFP_M_PAYMENT_OK, AFP_M_PAYMENT_ERROR,
    AFP_M_SALES_COUNT, AFP_M_SALES_AMOUNT, AFP_M_RSSI, AFP_M_UPTIME,
    AFP_M_COUNT
};
#define AFP_BIT(m) (UINT32_C(1) << (m))

/* Set a metric and mark it present: AFP_SET(m, tds_in, AFP_M_TDS_IN, 312.5); */
#define AFP_SET(metrics, field, bit, value) \
    do { (metrics).field = (value); (metrics).present |= AFP_BIT(bit); } while (0)

typedef struct {
    uint32_t present;        /* AFP_BIT(AFP_M_...) of every metric set */
    double tds_in;           /* ppm */
    double tds_out;          /* ppm */
    double feed_temp;        /* degC */
    double inlet_pressure;   /* kPa */
    double prefilter_dp;     /* kPa */
    double permeate_flow;    /* L/min */
    double dispense_flow;    /* L/min */
    double volume_total;     /* L, monotonic */
    double tank_level;       /* % */
    double pump_current;     /* A */
    double hot_temp;         /* degC */
    double cold_temp;        /* degC */
    double uv_intensity;     /* % of nominal */
    double uv_hours;         /* h */
    bool leak, door_open, mains_ok, heater_on, compressor_on, pump_on, uv_on, payment_ok;
    uint16_t payment_error;  /* 0 = none; payment module's code otherwise */
    uint32_t sales_count;    /* monotonic */
    uint64_t sales_amount;   /* minor currency units, monotonic */
    int16_t rssi;            /* dBm */
    uint32_t uptime;         /* s */
} afp_metrics;

typedef enum {
    AFP_CART_PP, AFP_CART_CARBON, AFP_CART_RO, AFP_CART_POST, AFP_CART_MINERAL
} afp_cartridge_kind;

/* Counters of one cartridge slot, as sent in telemetry. */
typedef struct {
    uint8_t slot;            /* 1..8, 1 = first after the inlet */
    double litres_used;
    double days_in_service;
} afp_stage_usage;

/* A cartridge slot as described in the birth. */
typedef struct {
    uint8_t slot;
    afp_cartridge_kind kind;
    double capacity_l;
    uint16_t capacity_days;
    double litres_used;
    double days_in_service;
    uint64_t installed_at_ms;  /* 0 = unknown, not sent */
    const char *serial;        /* NULL = not sent */
} afp_stage;

/* Fault codes: the table of SPEC.md. */
typedef enum {
    AFP_FAULT_PREFILTER_CLOGGED, AFP_FAULT_MEMBRANE_DEGRADED,
    AFP_FAULT_MEMBRANE_FAILED, AFP_FAULT_CARTRIDGE_EXHAUSTED,
    AFP_FAULT_CARTRIDGE_OVERDUE, AFP_FAULT_UV_LAMP_FAILURE,
    AFP_FAULT_UV_LAMP_EXPIRED, AFP_FAULT_LEAK, AFP_FAULT_PUMP_FAILURE,
    AFP_FAULT_NO_INLET_WATER, AFP_FAULT_VALVE_STUCK_OPEN, AFP_FAULT_TANK_EMPTY,
    AFP_FAULT_HEATER_FAILURE, AFP_FAULT_HOT_OVERTEMP,
    AFP_FAULT_COMPRESSOR_FAILURE, AFP_FAULT_PAYMENT_FAULT, AFP_FAULT_DOOR_OPEN,
    AFP_FAULT_POWER_LOSS, AFP_FAULT_SENSOR_FAULT, AFP_FAULT_CLOCK_DRIFT,
    AFP_FAULT_OFFLINE, AFP_FAULT_FLAPPING, AFP_FAULT_TELEMETRY_GAP,
    AFP_FAULT_COUNT
} afp_fault_code;

/* The wire name of a fault code, or NULL when out of range. */
const char *afp_fault_name(afp_fault_code code);

/* Configuration bits for afp_config.present. */
enum {
    AFP_CFG_TELEMETRY_INTERVAL_S, AFP_CFG_HOT_SETPOINT, AFP_CFG_COLD_SETPOINT,
    AFP_CFG_UV_LAMP_LIFE_H, AFP_CFG_DOOR_ALARM_S, AFP_CFG_PRICE_PER_LITRE,
    AFP_CFG_CURRENCY
};

typedef struct {
    uint32_t version;          /* increases with every change */
    uint32_t present;          /* AFP_BIT(AFP_CFG_...) of every member set */
    uint16_t telemetry_interval_s;
    double hot_setpoint;       /* degC */
    double cold_setpoint;      /* degC */
    uint32_t uv_lamp_life_h;
    uint32_t door_alarm_s;
    uint32_t price_per_litre;  /* minor currency units */
    char currency[4];          /* ISO 4217, NUL-terminated */
} afp_config;

/* ---- messages --------------------------------------------------------- */

typedef enum { AFP_CLASS_CAMPUS, AFP_CLASS_VENDING } afp_machine_class;

typedef struct {
    afp_header h;              /* h.hist must be false */
    uint32_t conn;             /* per-boot connection counter, 1 = first */
    const char *fw;
    const char *hw;            /* optional */
    const char *model;
    const char *serial;        /* optional */
    afp_machine_class machine_class;
    afp_config config;
    const afp_stage *stages;
    size_t n_stages;           /* 0..8 */
    afp_metrics metrics;       /* the full current state */
    const afp_fault_code *faults;  /* active faults */
    size_t n_faults;
} afp_birth;

typedef struct {
    afp_header h;
    afp_metrics metrics;
    const afp_stage_usage *stages;  /* may be NULL when n_stages is 0 */
    size_t n_stages;
} afp_telemetry;

typedef enum {
    AFP_EV_FAULT_RAISED, AFP_EV_FAULT_CLEARED, AFP_EV_DOOR_OPENED,
    AFP_EV_DOOR_CLOSED, AFP_EV_PAYMENT, AFP_EV_REBOOT, AFP_EV_CARTRIDGE_REPLACED
} afp_event_kind;

typedef enum {
    AFP_PAY_COIN, AFP_PAY_NOTE, AFP_PAY_CARD, AFP_PAY_QR, AFP_PAY_TOKEN, AFP_PAY_FREE
} afp_payment_method;

typedef enum { AFP_PAY_OK, AFP_PAY_DECLINED, AFP_PAY_ERROR } afp_payment_result;

typedef enum {
    AFP_RESET_POWER_ON, AFP_RESET_BROWNOUT, AFP_RESET_WATCHDOG, AFP_RESET_PANIC,
    AFP_RESET_SOFTWARE, AFP_RESET_OTA_UPDATE, AFP_RESET_COMMAND, AFP_RESET_UNKNOWN
} afp_reboot_reason;

typedef enum { AFP_SOURCE_NONE, AFP_SOURCE_PANEL, AFP_SOURCE_COMMAND } afp_replace_source;

/* One event; fill the member group of `kind`, the others are ignored. */
typedef struct {
    afp_header h;
    afp_event_kind kind;
    const char *detail;        /* optional, any kind, at most 256 characters */
    struct {                   /* AFP_EV_FAULT_RAISED, AFP_EV_FAULT_CLEARED */
        afp_fault_code code;
        bool has_value;
        double value;          /* the reading that raised or cleared it */
    } fault;
    struct {                   /* AFP_EV_DOOR_OPENED, AFP_EV_DOOR_CLOSED */
        bool has_maintenance;
        bool maintenance;
    } door;
    struct {                   /* AFP_EV_PAYMENT */
        afp_payment_method method;
        uint32_t amount;       /* minor currency units */
        char currency[4];
        bool has_volume;
        double volume_l;
        afp_payment_result result;
        bool has_error_code;
        uint16_t error_code;
    } payment;
    struct {                   /* AFP_EV_REBOOT */
        afp_reboot_reason reason;
        bool has_prev_uptime;
        uint32_t prev_uptime;  /* s, uptime of the previous boot */
    } reboot;
    struct {                   /* AFP_EV_CARTRIDGE_REPLACED */
        uint8_t slot;
        afp_cartridge_kind kind;
        double capacity_l;
        uint16_t capacity_days;
        const char *serial;    /* optional */
        afp_replace_source source;
    } cartridge;
} afp_event;

typedef enum { AFP_STATE_ONLINE, AFP_STATE_OFFLINE, AFP_STATE_LOST } afp_state;

/* Retained status; also the Will (state AFP_STATE_LOST, built at connect). */
typedef struct {
    const char *device_id;
    uint32_t boot;
    uint32_t conn;
    uint64_t ts_ms;
    afp_state state;
    const char *const *serves; /* gateways only: ids of the machines served */
    size_t n_serves;
} afp_status;

typedef enum {
    AFP_ACK_IN_PROGRESS, AFP_ACK_SUCCEEDED, AFP_ACK_FAILED, AFP_ACK_REJECTED,
    AFP_ACK_EXPIRED
} afp_ack_status;

typedef enum {
    AFP_ACK_ERR_NONE, AFP_ACK_ERR_UNKNOWN_COMMAND, AFP_ACK_ERR_BAD_ARGS,
    AFP_ACK_ERR_UNSUPPORTED, AFP_ACK_ERR_BUSY, AFP_ACK_ERR_NOT_AVAILABLE,
    AFP_ACK_ERR_INTERNAL
} afp_ack_error;

typedef struct {
    afp_header h;
    const char *cmd_id;        /* the command's id, echoed */
    afp_ack_status status;
    afp_ack_error error;       /* required with FAILED and REJECTED */
    const char *detail;        /* optional */
} afp_ack;

afp_result afp_encode_birth(char *buf, size_t cap, const afp_birth *msg);
afp_result afp_encode_telemetry(char *buf, size_t cap, const afp_telemetry *msg);
afp_result afp_encode_event(char *buf, size_t cap, const afp_event *msg);
afp_result afp_encode_status(char *buf, size_t cap, const afp_status *msg);
afp_result afp_encode_ack(char *buf, size_t cap, const afp_ack *msg);

#ifdef __cplusplus
}
#endif

#endif /* AQUAFLEET_PROTO_H */
