/*
 * gunzip through ISA-L (libisal), for rampack's layer blobs
 * (src/compress/native-inflate.ts). ISA-L inflates faster than node:zlib,
 * and it streams, so memory stays bounded whatever the layer's size.
 *
 *   createInflater() -> handle   the decoder of one gzip stream
 *   inflate(handle, input, output, callback(error, consumed, produced, memberEnded))
 *       decodes on libuv's thread pool, as node:zlib does, one call in flight
 *       per handle; calls back once the input is used up, the output is full
 *       or a gzip member ended (the decoder then expects the next member)
 *   close(handle)   frees the decoder now (a finalizer frees it otherwise)
 *   version() -> string   the ISA-L version it was built against
 *
 * The addon reads each member's header; ISA-L decodes the deflate data and
 * checks the trailer's CRC-32 and ISIZE. Context-aware (NAPI_MODULE_INIT)
 * and without global state, so it loads in worker threads too.
 */
#define ADDON_NAME "ISA-L"
#include "addon.h"
#include <isa-l.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STRINGIFY(x) #x
#define VERSION_STRING(major, minor, patch) STRINGIFY(major) "." STRINGIFY(minor) "." STRINGIFY(patch)

/* RFC 1952: ID1 ID2 CM FLG MTIME(4) XFL OS, then the optional fields FLG names. */
#define GZIP_FIXED_HEADER 10
#define GZIP_METHOD_DEFLATE 8
#define GZIP_FHCRC 0x02
#define GZIP_FEXTRA 0x04
#define GZIP_FNAME 0x08
#define GZIP_FCOMMENT 0x10
#define GZIP_RESERVED_FLAGS 0xe0
/* Errors of the header reader, beside ISA-L's own codes (which are -9 to 6). */
#define RESERVED_FLAGS_SET (-100)
#define HEADER_CRC_MISMATCH (-101)

/* The header field being read, in stream order. */
enum header_field { HEADER_FIXED, HEADER_EXTRA_LENGTH, HEADER_EXTRA, HEADER_NAME, HEADER_COMMENT, HEADER_CRC, HEADER_DONE };

/*
 * A member's header, read here rather than by ISA-L: ISA-L 2.30 gets the
 * header CRC (FHCRC) wrong when the header arrives in more than one piece,
 * checks the magic bytes only once it has ten bytes, and lets reserved flags
 * pass. Read byte by byte like zlib, a header is refused for the same reason
 * as by node:zlib, however the input is cut.
 */
struct gzip_header {
  enum header_field field;
  uint8_t bytes[GZIP_FIXED_HEADER]; /* the fixed part, then XLEN or the CRC-16 */
  uint32_t have;                    /* bytes of the current fixed-size field so far */
  uint8_t flags;                    /* FLG, once the fixed part is read */
  uint32_t extra_left;              /* FEXTRA bytes still to skip */
  uint32_t crc;                     /* CRC-32 of the header so far, for FHCRC */
};

struct inflater {
  struct inflate_state *state; /* NULL once closed */
  struct gzip_header header;   /* of the current member */

  /* The call in flight; work is NULL when there is none. */
  napi_async_work work;
  napi_ref self, input, output, callback; /* kept alive until the call completes */
  uint8_t *next_in, *next_out;
  uint32_t avail_in, avail_out;

  /* What the call did. */
  int result;
  uint32_t consumed, produced;
  bool member_ended;

  bool close_when_idle; /* close() came during a call */
  bool orphaned;        /* finalized during a call (environment teardown) */
};

static const napi_type_tag INFLATER_TAG = { 0x9b1d6c0a4e2f4b7aULL, 0x8c3e5d2f1a6b4c90ULL };

/* Throws unless `status` is napi_ok (a pending exception from Node-API itself is kept). */
/* The inflater behind a handle from createInflater(), else a TypeError. */
static struct inflater *inflater_arg(napi_env env, napi_value value) {
  bool tagged = false;
  napi_valuetype type;
  if (failed(env, napi_typeof(env, value, &type))) return NULL;
  if (type == napi_external && failed(env, napi_check_object_type_tag(env, value, &INFLATER_TAG, &tagged))) return NULL;
  if (!tagged) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "handle must come from createInflater()");
    return NULL;
  }
  struct inflater *inflater = NULL;
  if (failed(env, napi_get_value_external(env, value, (void **)&inflater))) return NULL;
  return inflater;
}

static bool function_arg(napi_env env, napi_value value, const char *name) {
  napi_valuetype type;
  if (failed(env, napi_typeof(env, value, &type))) return false;
  if (type == napi_function) return true;
  char message[96];
  snprintf(message, sizeof message, "%s must be a function", name);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
  return false;
}

static bool overlaps(const uint8_t *a, size_t a_length, const uint8_t *b, size_t b_length) {
  return a_length > 0 && b_length > 0 && a < b + b_length && b < a + a_length;
}

/* avail_in and avail_out are 32-bit: a longer buffer is taken in parts, one call each. */
static uint32_t clamp_to_uint32(size_t length) {
  return length > UINT32_MAX ? UINT32_MAX : (uint32_t)length;
}

static void free_state(napi_env env, struct inflater *inflater) {
  if (inflater->state == NULL) return;
  free(inflater->state);
  inflater->state = NULL;
  int64_t adjusted;
  napi_adjust_external_memory(env, -(int64_t)sizeof(struct inflate_state), &adjusted);
}

static void finalize_inflater(napi_env env, void *data, void *hint) {
  (void)hint;
  struct inflater *inflater = data;
  if (inflater->work != NULL) {
    inflater->orphaned = true; /* complete() frees it once the thread pool is done with it */
    return;
  }
  free_state(env, inflater);
  free(inflater);
}

static napi_value create_inflater(napi_env env, napi_callback_info info) {
  (void)info;
  struct inflater *inflater = calloc(1, sizeof *inflater);
  struct inflate_state *state = malloc(sizeof *state);
  if (inflater == NULL || state == NULL) {
    free(inflater);
    free(state);
    napi_throw_error(env, "ERR_MEMORY_ALLOCATION_FAILED", "ISA-L addon: out of memory for an inflater");
    return NULL;
  }
  isal_inflate_init(state);
  state->crc_flag = ISAL_GZIP_NO_HDR_VER; /* the header is read here; ISA-L checks CRC-32 and ISIZE */
  inflater->state = state;
  napi_value handle;
  if (failed(env, napi_create_external(env, inflater, finalize_inflater, NULL, &handle))) {
    free(state);
    free(inflater);
    return NULL;
  }
  if (failed(env, napi_type_tag_object(env, handle, &INFLATER_TAG))) return NULL;
  int64_t adjusted;
  napi_adjust_external_memory(env, sizeof *state, &adjusted); /* so the GC counts what a handle holds */
  return handle;
}

static bool decoded_fine(int result) {
  return result == ISAL_DECOMP_OK || result == ISAL_END_INPUT || result == ISAL_OUT_OVERFLOW;
}

/* The optional field after `done` that the flags name, or HEADER_DONE. */
static enum header_field field_after(uint8_t flags, enum header_field done) {
  if (done < HEADER_EXTRA_LENGTH && (flags & GZIP_FEXTRA)) return HEADER_EXTRA_LENGTH;
  if (done < HEADER_NAME && (flags & GZIP_FNAME)) return HEADER_NAME;
  if (done < HEADER_COMMENT && (flags & GZIP_FCOMMENT)) return HEADER_COMMENT;
  if (done < HEADER_CRC && (flags & GZIP_FHCRC)) return HEADER_CRC;
  return HEADER_DONE;
}

/* Copies up to `size` bytes of a fixed-size field; returns how many it took. */
static uint32_t collect(struct gzip_header *header, const uint8_t *input, uint32_t available, uint32_t size) {
  uint32_t taken = size - header->have < available ? size - header->have : available;
  memcpy(header->bytes + header->have, input, taken);
  header->have += taken;
  return taken;
}

/* Magic, method and flags, judged as soon as each byte is there. */
static int check_fixed(const struct gzip_header *header) {
  const uint8_t *bytes = header->bytes;
  if ((header->have >= 1 && bytes[0] != 0x1f) || (header->have >= 2 && bytes[1] != 0x8b)) return ISAL_INVALID_WRAPPER;
  if (header->have >= 3 && bytes[2] != GZIP_METHOD_DEFLATE) return ISAL_UNSUPPORTED_METHOD;
  if (header->have >= 4 && (bytes[3] & GZIP_RESERVED_FLAGS) != 0) return RESERVED_FLAGS_SET;
  return ISAL_DECOMP_OK;
}

/* Reads one field, or what there is of it; sets *taken, returns an error code or ISAL_DECOMP_OK. */
static int read_field(struct gzip_header *header, const uint8_t *input, uint32_t available, uint32_t *taken) {
  enum header_field field = header->field;
  bool complete = false;
  switch (field) {
    case HEADER_FIXED: {
      *taken = collect(header, input, available, GZIP_FIXED_HEADER);
      int checked = check_fixed(header);
      if (checked != ISAL_DECOMP_OK) return checked;
      complete = header->have == GZIP_FIXED_HEADER;
      if (complete) header->flags = header->bytes[3];
      break;
    }
    case HEADER_EXTRA_LENGTH:
      *taken = collect(header, input, available, 2);
      complete = header->have == 2;
      if (complete) header->extra_left = header->bytes[0] | header->bytes[1] << 8;
      break;
    case HEADER_EXTRA: /* may be empty: then complete at once */
      *taken = header->extra_left < available ? header->extra_left : available;
      header->extra_left -= *taken;
      complete = header->extra_left == 0;
      break;
    case HEADER_NAME:
    case HEADER_COMMENT: {
      const uint8_t *end = memchr(input, 0, available);
      *taken = end == NULL ? available : (uint32_t)(end - input) + 1;
      complete = end != NULL;
      break;
    }
    case HEADER_CRC:
      *taken = collect(header, input, available, 2);
      complete = header->have == 2;
      if (complete && (header->crc & 0xffff) != (uint32_t)(header->bytes[0] | header->bytes[1] << 8)) return HEADER_CRC_MISMATCH;
      break;
    case HEADER_DONE:
      *taken = 0;
      return ISAL_DECOMP_OK;
  }
  if (field != HEADER_CRC) header->crc = crc32_gzip_refl(header->crc, input, *taken);
  if (complete) {
    header->have = 0;
    header->field = field == HEADER_EXTRA_LENGTH ? HEADER_EXTRA : field_after(header->flags, field);
  }
  return ISAL_DECOMP_OK;
}

/* Reads header fields from the input until the header is done or the input used up. */
static int read_header(struct gzip_header *header, uint8_t **input, uint32_t *available) {
  while (*available > 0 && header->field != HEADER_DONE) {
    uint32_t taken = 0;
    int result = read_field(header, *input, *available, &taken);
    if (result != ISAL_DECOMP_OK) return result;
    *input += taken;
    *available -= taken;
  }
  return ISAL_DECOMP_OK;
}

/* On the thread pool: touches nothing of JavaScript's. */
static void execute(napi_env env, void *data) {
  (void)env;
  struct inflater *inflater = data;
  struct inflate_state *state = inflater->state;
  state->next_in = inflater->next_in;
  state->avail_in = inflater->avail_in;
  state->next_out = inflater->next_out;
  state->avail_out = inflater->avail_out;
  int result = read_header(&inflater->header, &state->next_in, &state->avail_in);
  if (result == ISAL_DECOMP_OK && inflater->header.field == HEADER_DONE) result = isal_inflate(state);
  inflater->result = result;
  inflater->consumed = inflater->avail_in - state->avail_in;
  inflater->produced = inflater->avail_out - state->avail_out;
  /* ISAL_BLOCK_FINISH: the trailer checked out and all output is out; bytes after it are handed back. */
  inflater->member_ended = decoded_fine(result) && state->block_state == ISAL_BLOCK_FINISH;
  if (inflater->member_ended) {
    isal_inflate_reset(state); /* keeps crc_flag */
    memset(&inflater->header, 0, sizeof inflater->header);
  }
}

static const char *describe_result(const struct inflater *inflater, char *buffer, size_t size) {
  switch (inflater->result) {
    case ISAL_INVALID_BLOCK:
      return "invalid deflate block (a bad block type, stored-block length or Huffman table)";
    case ISAL_INVALID_SYMBOL:
      return "invalid Huffman code in a deflate block";
    case ISAL_INVALID_LOOKBACK:
      return "a deflate back-reference points before the start of the data";
    case ISAL_INVALID_WRAPPER:
      return "not a gzip header (wrong magic bytes)";
    case ISAL_UNSUPPORTED_METHOD:
      return "the gzip header names a compression method other than deflate";
    case RESERVED_FLAGS_SET:
      snprintf(buffer, size, "the gzip header sets reserved flag bits (FLG 0x%02x)", inflater->header.bytes[3]);
      return buffer;
    case HEADER_CRC_MISMATCH:
      return "the gzip header's CRC-16 does not match it";
    case ISAL_INCORRECT_CHECKSUM:
      return "CRC-32 or size mismatch: the decompressed data does not match the member's trailer";
    case ISAL_NEED_DICT:
      return "the stream needs a preset dictionary, which gzip never uses";
    default:
      snprintf(buffer, size, "ISA-L failed with code %d", inflater->result);
      return buffer;
  }
}

static napi_value call_error(napi_env env, napi_status status, const struct inflater *inflater) {
  char buffer[96];
  const char *message = status == napi_cancelled ? "the inflate call was cancelled" : describe_result(inflater, buffer, sizeof buffer);
  napi_value code, text, error;
  napi_create_string_utf8(env, "ERR_CORRUPT_GZIP", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  return error;
}

static void delete_reference(napi_env env, napi_ref *reference) {
  if (*reference == NULL) return;
  napi_delete_reference(env, *reference);
  *reference = NULL;
}

/* Lets go of what the call kept alive. */
static void end_call(napi_env env, struct inflater *inflater) {
  delete_reference(env, &inflater->self);
  delete_reference(env, &inflater->input);
  delete_reference(env, &inflater->output);
  delete_reference(env, &inflater->callback);
  if (inflater->work != NULL) napi_delete_async_work(env, inflater->work);
  inflater->work = NULL;
}

/* Back on the JavaScript thread: hands the outcome to the callback. */
static void complete(napi_env env, napi_status status, void *data) {
  struct inflater *inflater = data;
  napi_value callback = NULL;
  napi_get_reference_value(env, inflater->callback, &callback);
  end_call(env, inflater);
  if (inflater->orphaned) {
    free_state(env, inflater);
    free(inflater);
    return;
  }
  napi_value args[4];
  bool ok = status == napi_ok && decoded_fine(inflater->result);
  if (ok) {
    napi_get_null(env, &args[0]);
  } else {
    args[0] = call_error(env, status, inflater);
  }
  napi_create_uint32(env, ok ? inflater->consumed : 0, &args[1]);
  napi_create_uint32(env, ok ? inflater->produced : 0, &args[2]);
  napi_get_boolean(env, ok && inflater->member_ended, &args[3]);
  if (inflater->close_when_idle) free_state(env, inflater);
  napi_value receiver;
  napi_get_undefined(env, &receiver);
  if (callback != NULL) napi_call_function(env, receiver, callback, 4, args, NULL);
}

static bool reference(napi_env env, napi_value value, napi_ref *out) {
  return !failed(env, napi_create_reference(env, value, 1, out));
}

static napi_value inflate(napi_env env, napi_callback_info info) {
  napi_value args[4];
  if (!get_args(env, info, 4, args)) return NULL;
  struct inflater *inflater = inflater_arg(env, args[0]);
  if (inflater == NULL) return NULL;
  uint8_t *input, *output;
  size_t input_length, output_length;
  if (!bytes_arg(env, args[1], "input", &input, &input_length)) return NULL;
  if (!bytes_arg(env, args[2], "output", &output, &output_length)) return NULL;
  if (!function_arg(env, args[3], "callback")) return NULL;
  if (inflater->state == NULL) {
    napi_throw_error(env, "ERR_INFLATER_CLOSED", "the inflater is closed");
    return NULL;
  }
  if (inflater->work != NULL) {
    napi_throw_error(env, "ERR_INFLATER_BUSY", "an inflate call is already in flight on this inflater: wait for its callback");
    return NULL;
  }
  if (output_length == 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "output must not be empty");
    return NULL;
  }
  if (overlaps(input, input_length, output, output_length)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "input and output must not share memory");
    return NULL;
  }
  inflater->next_in = input;
  inflater->avail_in = clamp_to_uint32(input_length);
  inflater->next_out = output;
  inflater->avail_out = clamp_to_uint32(output_length);
  napi_value name;
  bool queued = reference(env, args[0], &inflater->self) && reference(env, args[1], &inflater->input) &&
                reference(env, args[2], &inflater->output) && reference(env, args[3], &inflater->callback) &&
                !failed(env, napi_create_string_utf8(env, "rampack:isal-inflate", NAPI_AUTO_LENGTH, &name)) &&
                !failed(env, napi_create_async_work(env, NULL, name, execute, complete, inflater, &inflater->work)) &&
                !failed(env, napi_queue_async_work(env, inflater->work));
  if (!queued) end_call(env, inflater);
  return NULL;
}

static napi_value close_inflater(napi_env env, napi_callback_info info) {
  napi_value args[1];
  if (!get_args(env, info, 1, args)) return NULL;
  struct inflater *inflater = inflater_arg(env, args[0]);
  if (inflater == NULL) return NULL;
  if (inflater->work != NULL) {
    inflater->close_when_idle = true; /* the thread pool is using the state */
  } else {
    free_state(env, inflater);
  }
  return NULL;
}

static napi_value version(napi_env env, napi_callback_info info) {
  (void)info;
  return string_value(env, VERSION_STRING(ISAL_MAJOR_VERSION, ISAL_MINOR_VERSION, ISAL_PATCH_VERSION));
}

NAPI_MODULE_INIT() {
  const napi_property_descriptor functions[] = {
    ADDON_FUNCTION("createInflater", create_inflater),
    ADDON_FUNCTION("inflate", inflate),
    ADDON_FUNCTION("close", close_inflater),
    ADDON_FUNCTION("version", version),
  };
  return export_functions(env, exports, functions, sizeof functions / sizeof functions[0]);
}
