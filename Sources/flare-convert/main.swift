import FlareCLI
import FlareConvert

ToolMain.run(ConvertCommand.spec) { arguments in try ConvertCommand.run(arguments) }
