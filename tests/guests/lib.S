/* Shared 32-bit routines for the test guests: COM1 output and ACPI power-off.
 * No stack frames, no FPU, no int3: these run under KVM's instruction emulator. */
	.code32
	.text

/* putc: print %al on COM1, waiting for the transmitter. */
putc:
	push %edx
	push %eax
	mov $0x3fd, %dx
1:	in %dx, %al
	test $0x20, %al
	jz 1b
	pop %eax
	mov $0x3f8, %dx
	out %al, %dx
	pop %edx
	ret

/* puts: print the NUL-terminated string at %esi. */
puts:
	push %esi
	push %eax
1:	lodsb
	test %al, %al
	jz 2f
	call putc
	jmp 1b
2:	pop %eax
	pop %esi
	ret

/* putn: print %ecx bytes at %esi. */
putn:
	push %esi
	push %ecx
	push %eax
	test %ecx, %ecx
	jz 2f
1:	lodsb
	call putc
	loop 1b
2:	pop %eax
	pop %ecx
	pop %esi
	ret

/* putdec: print %eax in decimal. */
putdec:
	push %eax
	push %ebx
	push %ecx
	push %edx
	mov $10, %ebx
	xor %ecx, %ecx
1:	xor %edx, %edx
	div %ebx
	push %edx
	inc %ecx
	test %eax, %eax
	jnz 1b
2:	pop %eax
	add $'0', %al
	call putc
	loop 2b
	pop %edx
	pop %ecx
	pop %ebx
	pop %eax
	ret

/* print_initrd: "initrd: " + first min(8, %ecx) bytes at %esi + " (" %ecx " bytes)\n",
 * or "initrd: none\n" when %ecx is 0. */
print_initrd:
	push %esi
	mov $s_initrd, %esi
	call puts
	pop %esi
	test %ecx, %ecx
	jnz 1f
	mov $s_none, %esi
	call puts
	ret
1:	push %ecx
	cmp $8, %ecx
	jbe 2f
	mov $8, %ecx
2:	call putn
	pop %ecx
	mov $s_open, %esi
	call puts
	mov %ecx, %eax
	call putdec
	mov $s_bytes, %esi
	call puts
	ret

/* print_cmdline: "cmdline: " + the string at %esi + "\n". */
print_cmdline:
	push %esi
	mov $s_cmdline, %esi
	call puts
	pop %esi
	call puts
	mov $'\n', %al
	call putc
	ret

/* print_ram: "ram: N KiB\n" where N is %eax. */
print_ram:
	mov $s_ram, %esi
	call puts
	call putdec
	mov $s_kib, %esi
	call puts
	ret

/* cmd_is_wait: ZF set when the string at %esi starts with "wait". */
cmd_is_wait:
	cmpl $0x74696177, (%esi)
	ret

/* wait_forever: say so, then halt with interrupts off (the benchmark reads the helper's
 * memory now, then kills it). */
wait_forever:
	mov $s_waiting, %esi
	call puts
1:	cli
	hlt
	jmp 1b

/* acpi_poweroff: find the RSDP in 0xe0000..0x100000, the FADT through the XSDT, and
 * write SLP_TYP=5|SLP_EN to PM1a_CNT. Halts if anything is missing. */
acpi_poweroff:
	mov $0xe0000, %esi
1:	cmpl $0x20445352, (%esi)	/* "RSD " */
	jne 2f
	cmpl $0x20525450, 4(%esi)	/* "PTR " */
	je 3f
2:	add $16, %esi
	cmp $0x100000, %esi
	jb 1b
	jmp 9f
3:	mov 24(%esi), %esi		/* XSDT (low 32 bits) */
	mov 4(%esi), %ecx
	sub $36, %ecx
	shr $3, %ecx
	jz 9f
	lea 36(%esi), %edi
4:	mov (%edi), %ebx
	cmpl $0x50434146, (%ebx)	/* "FACP" */
	je 5f
	add $8, %edi
	loop 4b
	jmp 9f
5:	mov 64(%ebx), %edx		/* PM1a_CNT_BLK */
	test %edx, %edx
	jz 9f
	mov $((5 << 10) | (1 << 13)), %ax
	out %ax, %dx
9:	cli
	hlt
	jmp 9b

/* sum_ram: total of type-1 entries of a memory map, in KiB, into %eax.
 * %esi = first entry, %ecx = count, %edx = entry size; entries are addr(8) size(8) type(4). */
sum_ram:
	push %ebx
	push %edi
	xor %edi, %edi
	test %ecx, %ecx
	jz 2f
1:	cmpl $1, 16(%esi)
	jne 3f
	mov 8(%esi), %eax
	mov 12(%esi), %ebx
	shrd $10, %ebx, %eax
	add %eax, %edi
3:	add %edx, %esi
	loop 1b
2:	mov %edi, %eax
	pop %edi
	pop %ebx
	ret

	.section .rodata
s_cmdline:	.asciz "cmdline: "
s_ram:		.asciz "ram: "
s_kib:		.asciz " KiB\n"
s_initrd:	.asciz "initrd: "
s_none:		.asciz "none\n"
s_open:		.asciz " ("
s_bytes:	.asciz " bytes)\n"
s_waiting:	.asciz "waiting\n"
	.text
