import FlareTensor
import FlareTrain

BLAS.selectKernelsForThisCPU()
TrainCommand.main()
