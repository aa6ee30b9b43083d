// A minimal protobuf (proto3) encoder and decoder for the device protocol
// (proto/carebell/device/v1/device.proto): the Envelope and its bodies. Varints (64-bit values
// through BigInt), length-delimited strings, bytes and nested messages, packed or unpacked
// repeated scalars; unknown fields are skipped by wire type.
//
// Messages are plain objects with the proto field names (snake_case). An Envelope's body is
// the one key among the body names that is present, e.g. { seq: 1, ack: 0, hello: {...} }.
// 64-bit integers decode to Numbers (every value this protocol uses fits in 2^53).

const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;

/** Field tables: number → [name, type, options]. Types: scalar names or a message name. */
export const SCHEMA = {
  Envelope: {
    1: ['seq', 'uint64'],
    2: ['ack', 'uint64'],
    10: ['hello', 'Hello', { body: true }],
    11: ['challenge', 'Challenge', { body: true }],
    12: ['proof', 'Proof', { body: true }],
    13: ['welcome', 'Welcome', { body: true }],
    14: ['rejected', 'Rejected', { body: true }],
    15: ['heartbeat', 'Heartbeat', { body: true }],
    20: ['call_request', 'CallRequest', { body: true }],
    21: ['call_cancel', 'CallCancel', { body: true }],
    22: ['call_update', 'CallUpdate', { body: true }],
    23: ['alarm', 'Alarm', { body: true }],
    24: ['notice', 'Notice', { body: true }],
    25: ['go_away', 'GoAway', { body: true }],
    26: ['error', 'Error', { body: true }],
    27: ['order_update', 'OrderUpdate', { body: true }],
    28: ['order_rating', 'OrderRating', { body: true }],
    29: ['rtc_signal', 'RtcSignal', { body: true }],
    31: ['reminder', 'Reminder', { body: true }],
    32: ['reminder_confirm', 'ReminderConfirm', { body: true }],
    33: ['content_item', 'ContentItem', { body: true }],
    34: ['content_opened', 'ContentOpened', { body: true }],
  },
  Hello: {
    1: ['device_id', 'string'],
    2: ['protocol_versions', 'uint32', { repeated: true }],
    3: ['firmware_version', 'string'],
  },
  Challenge: {
    1: ['nonce', 'bytes'],
    2: ['protocol_version', 'uint32'],
  },
  Proof: {
    1: ['signature', 'bytes'],
  },
  Welcome: {
    1: ['session_id', 'string'],
    2: ['heartbeat_interval_ms', 'uint32'],
    3: ['server_time_ms', 'int64'],
    4: ['max_frame_bytes', 'uint32'],
    5: ['protocol_version', 'uint32'],
  },
  Rejected: {
    1: ['reason', 'enum'],
    2: ['message', 'string'],
  },
  Heartbeat: {
    1: ['battery_percent', 'uint32'],
  },
  CallRequest: {
    1: ['request_id', 'string'],
    2: ['pressed_at_ms', 'int64'],
  },
  CallCancel: {
    1: ['request_id', 'string'],
  },
  CallUpdate: {
    1: ['update_id', 'uint64'],
    2: ['request_id', 'string'],
    3: ['call_id', 'string'],
    4: ['state', 'enum'],
    5: ['operator_display_name', 'string'],
    6: ['reason', 'string'],
  },
  Alarm: {
    1: ['alarm_id', 'string'],
    2: ['kind', 'enum'],
    3: ['raised_at_ms', 'int64'],
    4: ['detail', 'string'],
  },
  OrderUpdate: {
    1: ['update_id', 'uint64'],
    2: ['order_id', 'string'],
    3: ['state', 'string'],
    4: ['service_name_zh', 'string'],
    5: ['service_name_en', 'string'],
    6: ['provider_name', 'string'],
    7: ['staff_name', 'string'],
    8: ['eta_ms', 'int64'],
    9: ['text_zh', 'string'],
    10: ['text_en', 'string'],
  },
  OrderRating: {
    1: ['order_id', 'string'],
    2: ['stars', 'uint32'],
  },
  Notice: {
    1: ['update_id', 'uint64'],
    2: ['text', 'string'],
    3: ['from', 'string'],
  },
  RtcSignal: {
    1: ['call_id', 'string'],
    2: ['kind', 'string'],
    3: ['payload', 'string'],
  },
  Reminder: {
    1: ['update_id', 'uint64'],
    2: ['occurrence_id', 'string'],
    3: ['kind', 'string'],
    4: ['title', 'string'],
    5: ['due_at_ms', 'int64'],
    6: ['respond_by_ms', 'int64'],
    7: ['attempt', 'uint32'],
  },
  ReminderConfirm: {
    1: ['occurrence_id', 'string'],
  },
  ContentItem: {
    1: ['update_id', 'uint64'],
    2: ['content_id', 'string'],
    3: ['kind', 'string'],
    4: ['title', 'string'],
    5: ['body', 'string'],
    6: ['media_url', 'string'],
    7: ['language', 'string'],
    8: ['tags', 'string', { repeated: true }],
  },
  ContentOpened: {
    1: ['content_id', 'string'],
  },
  GoAway: {
    1: ['reconnect_after_ms', 'uint32'],
    2: ['reason', 'string'],
  },
  Error: {
    1: ['code', 'enum'],
    2: ['message', 'string'],
    3: ['ref_seq', 'uint64'],
  },
};

/** The names of the Envelope's body variants. */
export const BODY_NAMES = Object.values(SCHEMA.Envelope).filter(([, , o]) => o?.body).map(([name]) => name);

export const CallState = { UNSPECIFIED: 0, QUEUED: 1, RINGING: 2, ANSWERED: 3, ENDED: 4, ABANDONED: 5 };
export const AlarmKind = { UNSPECIFIED: 0, SOS: 1, FALL: 2, SMOKE: 3, NO_ACTIVITY: 4, LOW_BATTERY: 5, POWER_LOSS: 6 };
export const RejectReason = { UNSPECIFIED: 0, BAD_CREDENTIALS: 1, UNSUPPORTED_VERSION: 2, PROTOCOL_VIOLATION: 3, SERVER_BUSY: 4 };
export const ErrorCode = {
  UNSPECIFIED: 0, MALFORMED_FRAME: 1, FRAME_TOO_LARGE: 2, TEXT_FRAME: 3, NOT_AUTHENTICATED: 4, UNKNOWN_MESSAGE: 5,
  INVALID_ARGUMENT: 6, PROTOCOL_VIOLATION: 7, UNAVAILABLE: 8, INTERNAL: 9,
};

const VARINT_TYPES = new Set(['uint64', 'int64', 'uint32', 'int32', 'enum', 'bool']);
const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------------------------------------
// Encoding

class Writer {
  constructor() {
    this.bytes = [];
  }

  varint(value) {
    let v = BigInt.asUintN(64, BigInt(value));
    while (v >= 0x80n) {
      this.bytes.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.bytes.push(Number(v));
  }

  tag(field, wireType) {
    this.varint((field << 3) | wireType);
  }

  raw(data) {
    for (const b of data) this.bytes.push(b);
  }

  finish() {
    return Uint8Array.from(this.bytes);
  }
}

function scalarToBigInt(type, value) {
  if (type === 'bool') return value ? 1n : 0n;
  if (typeof value === 'bigint') return value;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new TypeError(`not a number: ${value}`);
  return BigInt(Math.trunc(n));
}

function isDefault(type, value) {
  if (value === undefined || value === null) return true;
  if (type === 'string') return value === '';
  if (type === 'bytes') return value.length === 0;
  if (type === 'bool') return !value;
  if (VARINT_TYPES.has(type)) return scalarToBigInt(type, value) === 0n;
  return false; // a message that is set is always written
}

function toBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return Uint8Array.from(value);
  throw new TypeError('bytes field needs a Uint8Array');
}

function encodeInto(writer, typeName, message) {
  const table = SCHEMA[typeName];
  if (!table) throw new TypeError(`unknown message type ${typeName}`);
  const numbers = Object.keys(table).map(Number).sort((a, b) => a - b);
  for (const number of numbers) {
    const [name, type, options] = table[number];
    const value = message?.[name];
    if (options?.repeated) {
      const values = value ?? [];
      if (values.length === 0) continue;
      if (VARINT_TYPES.has(type)) {
        // Packed, as proto3 does by default.
        const packed = new Writer();
        for (const item of values) packed.varint(scalarToBigInt(type, item));
        const data = packed.finish();
        writer.tag(number, LEN);
        writer.varint(data.length);
        writer.raw(data);
      } else {
        for (const item of values) encodeField(writer, number, type, item);
      }
      continue;
    }
    if (SCHEMA[type]) {
      if (value === undefined || value === null) continue;
      encodeField(writer, number, type, value);
      continue;
    }
    if (isDefault(type, value)) continue;
    encodeField(writer, number, type, value);
  }
}

function encodeField(writer, number, type, value) {
  if (VARINT_TYPES.has(type)) {
    writer.tag(number, VARINT);
    writer.varint(scalarToBigInt(type, value));
  } else if (type === 'string') {
    const data = textEncoder.encode(String(value));
    writer.tag(number, LEN);
    writer.varint(data.length);
    writer.raw(data);
  } else if (type === 'bytes') {
    const data = toBytes(value);
    writer.tag(number, LEN);
    writer.varint(data.length);
    writer.raw(data);
  } else if (SCHEMA[type]) {
    const inner = new Writer();
    encodeInto(inner, type, value);
    const data = inner.finish();
    writer.tag(number, LEN);
    writer.varint(data.length);
    writer.raw(data);
  } else {
    throw new TypeError(`unknown field type ${type}`);
  }
}

/** Encodes `message` (a plain object) as the protobuf message `typeName`. */
export function encode(typeName, message) {
  const writer = new Writer();
  encodeInto(writer, typeName, message);
  return writer.finish();
}

/** Encodes an Envelope: { seq, ack, <body name>: {...} } (at most one body). */
export function encodeEnvelope(envelope) {
  const present = BODY_NAMES.filter((name) => envelope[name] !== undefined && envelope[name] !== null);
  if (present.length > 1) throw new TypeError(`an envelope carries one body, not ${present.join(', ')}`);
  return encode('Envelope', envelope);
}

// ---------------------------------------------------------------------------------------------
// Decoding

export class DecodeError extends Error {}

class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }

  get done() {
    return this.pos >= this.bytes.length;
  }

  varint() {
    let result = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i += 1) {
      if (this.pos >= this.bytes.length) throw new DecodeError('truncated varint');
      const b = this.bytes[this.pos];
      this.pos += 1;
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return BigInt.asUintN(64, result);
      shift += 7n;
    }
    throw new DecodeError('varint too long');
  }

  take(length) {
    if (length < 0 || this.pos + length > this.bytes.length) throw new DecodeError('truncated field');
    const out = this.bytes.subarray(this.pos, this.pos + length);
    this.pos += length;
    return out;
  }

  skip(wireType) {
    switch (wireType) {
      case VARINT: this.varint(); break;
      case I64: this.take(8); break;
      case LEN: this.take(Number(this.varint())); break;
      case I32: this.take(4); break;
      default: throw new DecodeError(`unsupported wire type ${wireType}`);
    }
  }
}

function fromVarint(type, v) {
  switch (type) {
    case 'bool': return v !== 0n;
    case 'int64': return Number(BigInt.asIntN(64, v));
    case 'int32':
    case 'enum': return Number(BigInt.asIntN(32, v));
    case 'uint32': return Number(BigInt.asUintN(32, v));
    default: return Number(v);
  }
}

function defaults(typeName) {
  const out = {};
  for (const [name, type, options] of Object.values(SCHEMA[typeName])) {
    if (options?.body) continue;
    if (options?.repeated) out[name] = [];
    else if (type === 'string') out[name] = '';
    else if (type === 'bytes') out[name] = new Uint8Array(0);
    else if (type === 'bool') out[name] = false;
    else if (VARINT_TYPES.has(type)) out[name] = 0;
    // messages: absent
  }
  return out;
}

function decodeMessage(typeName, bytes) {
  const table = SCHEMA[typeName];
  const out = defaults(typeName);
  const reader = new Reader(bytes);
  while (!reader.done) {
    const key = reader.varint();
    const number = Number(key >> 3n);
    const wireType = Number(key & 7n);
    if (number === 0) throw new DecodeError('field number 0');
    const entry = table[number];
    if (!entry) {
      reader.skip(wireType);
      continue;
    }
    const [name, type, options] = entry;
    if (VARINT_TYPES.has(type)) {
      if (options?.repeated && wireType === LEN) {
        const inner = new Reader(reader.take(Number(reader.varint())));
        while (!inner.done) out[name].push(fromVarint(type, inner.varint()));
      } else if (wireType === VARINT) {
        const value = fromVarint(type, reader.varint());
        if (options?.repeated) out[name].push(value);
        else out[name] = value;
      } else {
        reader.skip(wireType); // wrong wire type: ignore, as a tolerant reader
      }
      continue;
    }
    if (wireType !== LEN) {
      reader.skip(wireType);
      continue;
    }
    const data = reader.take(Number(reader.varint()));
    let value;
    if (type === 'string') {
      try {
        value = textDecoder.decode(data);
      } catch {
        throw new DecodeError(`field ${name} is not valid UTF-8`);
      }
    } else if (type === 'bytes') {
      value = data.slice();
    } else {
      value = decodeMessage(type, data);
    }
    if (options?.repeated) out[name].push(value);
    else out[name] = value;
    if (options?.body) {
      // A oneof: the last body seen wins.
      for (const other of BODY_NAMES) if (other !== name) delete out[other];
      out.body = name;
    }
  }
  return out;
}

/** Decodes the protobuf message `typeName` from bytes (Uint8Array or ArrayBuffer). */
export function decode(typeName, bytes) {
  return decodeMessage(typeName, toBytes(bytes));
}

/** Decodes an Envelope; `body` names its body (or is undefined for a pure acknowledgement). */
export function decodeEnvelope(bytes) {
  return decode('Envelope', bytes);
}

// ---------------------------------------------------------------------------------------------
// Small byte helpers

export function base64ToBytes(text) {
  const clean = String(text).trim().replace(/-/g, '+').replace(/_/g, '/').replace(/\s+/g, '');
  const padded = clean + '='.repeat((4 - (clean.length % 4)) % 4);
  const binary = atob(padded);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function concatBytes(...parts) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** The bytes the device signs: "carebell.device.v1/auth" 0x00 device_id 0x00 nonce. */
export function authMessage(deviceId, nonce) {
  return concatBytes(
    textEncoder.encode('carebell.device.v1/auth'),
    Uint8Array.of(0),
    textEncoder.encode(deviceId),
    Uint8Array.of(0),
    toBytes(nonce),
  );
}

const PKCS8_ED25519_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
]);

/** Imports a 32-byte Ed25519 seed as a WebCrypto signing key (PKCS#8). */
export async function importSeed(seed, subtle = globalThis.crypto.subtle) {
  const bytes = toBytes(seed);
  if (bytes.length !== 32) throw new Error(`an Ed25519 private key is 32 bytes, not ${bytes.length}`);
  return subtle.importKey('pkcs8', concatBytes(PKCS8_ED25519_PREFIX, bytes), { name: 'Ed25519' }, false, ['sign']);
}

/** Signs the handshake proof with the seed. */
export async function signProof(seed, deviceId, nonce, subtle = globalThis.crypto.subtle) {
  const key = await importSeed(seed, subtle);
  const signature = await subtle.sign({ name: 'Ed25519' }, key, authMessage(deviceId, nonce));
  return new Uint8Array(signature);
}
