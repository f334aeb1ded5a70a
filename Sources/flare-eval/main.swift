import FlareEval
import FlareTensor

BLAS.selectKernelsForThisCPU()
EvalCommand.main()
