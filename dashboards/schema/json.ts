// A schema type as it looks in JSON: string enums become their string values
// (JSON holds "thresholds", not FieldColorModeId.Thresholds); everything else,
// including required and unknown properties, is checked exactly as Grafana declares it.
export type Json<T> =
  T extends string ? (string extends T ? string : `${T}`)
  : T extends number | boolean | null | undefined ? T
  : T extends ReadonlyArray<infer U> ? Array<Json<U>>
  : T extends object ? { [K in keyof T]: Json<T[K]> }
  : T;
