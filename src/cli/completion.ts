/** `rampack completion bash|zsh|fish`: shell completion scripts generated from the command definitions. */
import { Command, type Option } from 'commander';
import { UsageError } from '../errors.ts';

const SHELLS = ['bash', 'zsh', 'fish'] as const;
type Shell = (typeof SHELLS)[number];

interface OptionSpec {
  flags: string[];
  description: string;
  takesValue: boolean;
  choices: readonly string[];
}

interface CommandSpec {
  name: string;
  description: string;
  options: OptionSpec[];
  /** Its own subcommands (`manifest merge|sign|verify`), with their options. */
  subcommands: { name: string; options: OptionSpec[] }[];
}

const HELP: OptionSpec = { flags: ['-h', '--help'], description: 'display help', takesValue: false, choices: [] };

function optionSpec(option: Option): OptionSpec {
  return {
    flags: [option.short, option.long].filter((flag): flag is string => flag !== undefined),
    description: option.description,
    takesValue: option.required || option.optional,
    choices: option.argChoices ?? [],
  };
}

const subcommandNames = (command: CommandSpec) => command.subcommands.map((subcommand) => subcommand.name).join(' ');

function commandSpecs(root: Command): { global: OptionSpec[]; commands: CommandSpec[] } {
  return {
    global: [...root.options.map(optionSpec), HELP],
    commands: root.commands.map((command) => ({
      name: command.name(),
      description: command.description(),
      options: [...command.options.map(optionSpec), HELP],
      subcommands: command.commands.map((subcommand) => ({ name: subcommand.name(), options: [...subcommand.options.map(optionSpec), HELP] })),
    })),
  };
}

/** Text safe inside single quotes in every shell, and inside zsh's [descriptions]. */
function plain(text: string): string {
  return text.replace(/'/g, '’').replace(/[[\]:]/g, ' ').replace(/\s+/g, ' ').trim();
}

function bash(root: Command): string {
  const { global, commands } = commandSpecs(root);
  const words = (options: OptionSpec[]) => options.flatMap((option) => option.flags).join(' ');
  const choiceCases = commands
    .flatMap((command) => [...command.options, ...command.subcommands.flatMap((subcommand) => subcommand.options)])
    .concat(global)
    .filter((option) => option.choices.length > 0)
    .map((option) => `    ${option.flags.join('|')}) COMPREPLY=($(compgen -W '${option.choices.join(' ')}' -- "$cur")); return ;;`);
  const commandCases = commands.flatMap((command) => [
    ...command.subcommands.map((subcommand) => `    '${command.name} ${subcommand.name}') opts='${words(subcommand.options)}' ;;`),
    `    ${command.name}*) opts='${words(command.options)}' subs='${subcommandNames(command)}' ;;`,
  ]);
  return `# bash completion for rampack: source <(rampack completion bash)
_rampack() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} command= sub= word opts subs=
  for word in "\${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
    case $word in -*) ;; *) if [[ -z $command ]]; then command=$word; elif [[ -z $sub ]]; then sub=$word; fi ;; esac
  done
  case $prev in
${[...new Set(choiceCases)].join('\n')}
  esac
  case "$command $sub" in
${commandCases.join('\n')}
    *) opts='${commands.map((command) => command.name).join(' ')} ${words(global)}' ;;
  esac
  if [[ -n $subs && $prev == "$command" && $cur != -* ]]; then
    COMPREPLY=($(compgen -W "$subs" -- "$cur"))
  elif [[ -z $command || $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  else
    COMPREPLY=($(compgen -f -- "$cur"))
  fi
}
complete -o default -F _rampack rampack
`;
}

function zshArgument(option: OptionSpec): string {
  const value = option.takesValue ? `:value:${option.choices.length > 0 ? `(${option.choices.join(' ')})` : '_files'}` : '';
  const names = option.flags.length > 1 ? `(${option.flags.join(' ')})'{${option.flags.join(',')}}'` : option.flags[0]!;
  return `'${names}[${plain(option.description)}]${value}'`;
}

function zsh(root: Command): string {
  const { global, commands } = commandSpecs(root);
  const commandCases = commands.map((command) =>
    command.subcommands.length > 0
      ? `    (${command.name}) if (( CURRENT == 3 )); then _values subcommand ${subcommandNames(command)}; else case $words[3] in ${command.subcommands
          .map((subcommand) => `(${subcommand.name}) _arguments ${subcommand.options.map(zshArgument).join(' ')} '*:file:_files' ;;`)
          .join(' ')} esac; fi ;;`
      : `    (${command.name}) _arguments ${command.options.map(zshArgument).join(' ')} '*:file:_files' ;;`,
  );
  return `#compdef rampack
# zsh completion for rampack: source <(rampack completion zsh), or save as _rampack on $fpath
_rampack() {
  local -a commands
  commands=(${commands.map((command) => `'${command.name}:${plain(command.description)}'`).join(' ')})
  if (( CURRENT == 2 )); then
    _describe command commands
    _arguments ${global.map(zshArgument).join(' ')}
    return
  fi
  case $words[2] in
${commandCases.join('\n')}
  esac
}
compdef _rampack rampack
`;
}

function fishOption(condition: string, option: OptionSpec): string {
  const names = option.flags.map((flag) => (flag.startsWith('--') ? `-l ${flag.slice(2)}` : `-s ${flag.slice(1)}`)).join(' ');
  const value = option.choices.length > 0 ? ` -x -a '${option.choices.join(' ')}'` : option.takesValue ? ' -r' : '';
  return `complete -c rampack -n '${condition}' ${names}${value} -d '${plain(option.description)}'`;
}

function fish(root: Command): string {
  const { global, commands } = commandSpecs(root);
  return [
    '# fish completion for rampack: rampack completion fish > ~/.config/fish/completions/rampack.fish',
    ...commands.map((command) => `complete -c rampack -f -n __fish_use_subcommand -a ${command.name} -d '${plain(command.description)}'`),
    ...global.map((option) => fishOption('__fish_use_subcommand', option)),
    ...commands.flatMap((command) => command.options.map((option) => fishOption(`__fish_seen_subcommand_from ${command.name}`, option))),
    ...commands
      .filter((command) => command.subcommands.length > 0)
      .map((command) => `complete -c rampack -f -n '__fish_seen_subcommand_from ${command.name}' -a '${subcommandNames(command)}'`),
    ...commands.flatMap((command) =>
      command.subcommands.flatMap((subcommand) =>
        subcommand.options.map((option) => fishOption(`__fish_seen_subcommand_from ${command.name}; and __fish_seen_subcommand_from ${subcommand.name}`, option)),
      ),
    ),
    '',
  ].join('\n');
}

const GENERATORS: Record<Shell, (root: Command) => string> = { bash, zsh, fish };

export function completionCommand(): Command {
  return new Command('completion')
    .description('print a shell completion script (bash, zsh or fish)')
    .argument('<shell>', `one of: ${SHELLS.join(', ')}`)
    .addHelpText(
      'after',
      `
Examples:
  source <(rampack completion bash)            # in ~/.bashrc
  source <(rampack completion zsh)             # in ~/.zshrc (after compinit)
  rampack completion fish > ~/.config/fish/completions/rampack.fish`,
    )
    .action((shell: string, _flags: unknown, command: Command) => {
      if (!SHELLS.includes(shell as Shell)) throw new UsageError(`no completion for shell "${shell}"`, { hint: `use one of: ${SHELLS.join(', ')}` });
      process.stdout.write(GENERATORS[shell as Shell](command.parent!));
    });
}
