"""Next-step prediction of a noisy sine wave (sequence-to-one regression).

    python examples/sine_regression.py
"""

import numpy as np

import rnnfast as rf


def main(n_steps=4000, window=24, epochs=24, hidden=32, seed=0, verbose=1):
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)
    series = (np.sin(2 * np.pi * t / 50) + 0.5 * np.sin(2 * np.pi * t / 17)
              + 0.05 * rng.standard_normal(n_steps)).astype(np.float32)
    x, y = rf.data.sliding_windows(series, window)          # x (N, window), y (N,)
    x, y = x[..., None], y[:, None]                         # one feature per step
    x_tr, x_va, y_tr, y_va = rf.data.train_val_split(x, y, val_fraction=0.2, seed=seed)

    model = rf.Sequential([rf.LSTM(1, hidden, batch_first=True, seed=seed), rf.LastStep(),
                           rf.Dense(hidden, 1, seed=seed)], seed=seed)
    opt = rf.optim.Adam(model, lr=0.01)
    model.compile("mse", opt)
    schedule = rf.optim.CosineAnnealingLR(opt, T_max=epochs, eta_min=1e-4)  # per epoch
    model.fit(x_tr, y_tr, epochs=epochs, batch_size=32, validation_data=(x_va, y_va),
              verbose=verbose, callbacks=[rf.callbacks.LearningRateScheduler(schedule)])
    mse = model.evaluate(x_va, y_va)["loss"]
    ratio = mse / float(np.var(y_va))
    if verbose:
        print(f"validation MSE {mse:.5f} = {100 * ratio:.2f}% of the target variance")
    return ratio


if __name__ == "__main__":
    main()
