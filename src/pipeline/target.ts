/**
 * What the pipeline builds: one cell (language x version x arch, and a
 * variant) with everything it needs, resolved from a recipe or from flags
 * by the layers above (src/recipe, src/cli).
 */
import type { Compression } from '../compress/index.ts';
import type { Arch } from '../oci/content.ts';

/** One image to build: a cell of language x version x arch. */
export interface BuildTarget {
  language: string;
  version: string;
  isDefault: boolean;
  arch: Arch;
  /** Full image reference: repository plus tag and/or digest. */
  image: string;
  /** Agent binary path; when set it wins over agentImage (--agent overrides the recipe). */
  agent?: string;
  /** Image holding the agent, pulled into the cache before the build (src/recipe/agent-image.ts). */
  agentImage?: { reference: string; path: string };
  compression: Compression;
  level?: number;
  env: string[];
  /** Command proving the language works in the booted image. */
  smoke?: string[];
  /** RAM of the VM that boots the image, in bytes: the build warns when unpacking would not fit. */
  memoryBudget?: number;
  /** Files added to the tree. */
  files?: ExtraFile[];
  /** Globs of paths left out of the tree. */
  drop?: string[];
  /** The recipe's slim settings: on the full target (what `rampack slim` traces) and on its slim variant. */
  slim?: SlimSettings;
  /** "slim" for the variant built from the trace; absent for the full image. */
  variant?: Variant;
  /** Where the target came from, for messages. */
  origin: string;
}

/** A file to add to the image tree, resolved for one arch. */
export interface ExtraFile {
  /** Absolute path on the build machine. */
  source: string;
  /** Absolute path in the image, as written in the recipe. */
  destination: string;
  mode: number;
  uid: number;
  gid: number;
}

/** A slim variant's settings, resolved for one cell. */
export interface SlimSettings {
  /** Commands the tracer runs after the smoke command. */
  workload: string[][];
  /** Absolute directory copied to /.rampack-probe/workload while tracing and verifying. */
  workloadFiles?: string;
  keep: string[];
  /** Absolute path of the cell's trace file. */
  traceFile: string;
}

/** Absent for the full image. */
export type Variant = 'slim';

/** The cell's key: `rampack plan` and `build --only` name cells by it, and output files are named after it. */
export function cellKey(target: Pick<BuildTarget, 'language' | 'version' | 'arch' | 'variant'>): string {
  return `${target.language}-${target.version}-${target.arch}${target.variant ? `-${target.variant}` : ''}`;
}

