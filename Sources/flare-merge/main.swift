import FlareCLI
import FlareMerge

ToolMain.run(MergeCommand.spec) { arguments in try MergeCommand.run(arguments) }
