import FlareCLI
import FlareInspect

ToolMain.run(InspectCommand.spec) { arguments in try InspectCommand.run(arguments) }
